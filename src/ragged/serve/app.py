"""The HTTP face of the service (Starlette).

Every error is a JSON body ``{"error": ...}`` with a fitting status (400,
401, 403, 404, 405, 410, 413, 415, 429, 503), never a traceback. Requests
from other sites are refused first (:mod:`ragged.serve.security`); then,
with a token, every request but ``/health`` and the sign-in page must
carry it, as ``Authorization: Bearer TOKEN`` or as the cookie the sign-in
page sets. A search is costed before it is queued
(:mod:`ragged.serve.budget`). An unexpected error is logged once, without
the values of variables (no token, no body), and answered 500.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import time
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from loguru import logger
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ragged.errors import ClientError, ConfigurationError, EmptyQueryError, RaggedError, ServeError, http_status
from ragged.index.results import clean_query
from ragged.query.modes import Mode, parse_mode
from ragged.serve.budget import Admission, RequestLimits, estimate
from ragged.serve.metrics import CONTENT_TYPE, ServiceMetrics
from ragged.serve.security import BrowserGuard, HostPolicy, content_security_policy
from ragged.serve.service import SearchService

COOKIE = "ragged_token"
PUBLIC = {"/health", "/login"}
MAX_BODY_BYTES = 64 * 1024


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def _static(name: str) -> str:
    return resources.files("ragged.serve").joinpath("static", name).read_text(encoding="utf-8")


class _Guard(BaseHTTPMiddleware):
    """Token and body-size checks before any handler runs."""

    def __init__(self, app: Any, token: str | None, max_body: int) -> None:
        super().__init__(app)
        self.token, self.max_body = token, max_body

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        if self.token and request.url.path not in PUBLIC:
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else request.cookies.get(COOKIE, "")
            if not hmac.compare_digest(given.encode(), self.token.encode()):
                if request.method == "GET" and request.url.path == "/":
                    return RedirectResponse("/login", status_code=303)
                return _error(401, "Missing or wrong token: send 'Authorization: Bearer TOKEN'.")
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return _error(413, f"Request body over {self.max_body:,} bytes.")
        return await call_next(request)


async def _body(request: Request, limit: int) -> bytes:
    """The body, read up to ``limit`` bytes (a chunked body has no length to check first)."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise ClientError(f"Request body over {limit:,} bytes.", 413)
    return body


async def _json_body(request: Request, limit: int) -> dict[str, Any]:
    body = await _body(request, limit)
    try:
        data = json.loads(body or b"null")
    except ValueError:
        raise ClientError("The body is not valid JSON.") from None
    except RecursionError:  # a few KiB of brackets: refused as what it is, not a 500
        raise ClientError("The body's JSON is nested too deeply.") from None
    if not isinstance(data, dict):
        raise ClientError("The body must be a JSON object.")
    return data


def _query(value: Any, limit: int, notices: list[str]) -> str:
    """One query from a body: a non-empty string within ``limit`` characters,
    repaired as the command line repairs it (a notice added when it was)."""
    if not isinstance(value, str) or not value.strip():
        raise ClientError("Every query must be a non-empty string.")
    if len(value) > limit:
        raise ClientError(f"A query is longer than {limit:,} characters.", 413)
    try:
        text, notice = clean_query(value)
    except EmptyQueryError as exc:
        raise ClientError(str(exc)) from None
    if notice and notice not in notices:
        notices.append(notice)
    return text


def _queries(data: dict[str, Any], service: SearchService,
             notices: list[str]) -> tuple[list[str], int, bool, Mode]:
    """(queries, k, single, mode) from a /search body, checked against the limits."""
    config = service.config
    if ("query" in data) == ("queries" in data):
        raise ClientError("Give either 'query' (a string) or 'queries' (a list of strings).")
    single = "query" in data
    queries = [data["query"]] if single else data["queries"]
    if not isinstance(queries, list) or not queries or len(queries) > config.max_queries:
        raise ClientError(f"'queries' must be a list of 1 to {config.max_queries} strings.")
    texts = [_query(q, config.max_query_chars, notices) for q in queries]
    k = data.get("k", 10)
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= config.max_k:
        raise ClientError(f"'k' must be an integer from 1 to {config.max_k}.")
    mode = data.get("mode")
    mode = "auto" if mode is None or mode == "" else mode  # absent, null or "": the default
    try:
        chosen = parse_mode(mode if isinstance(mode, str) else repr(mode), service.has_text)
    except ConfigurationError as exc:
        raise ClientError(str(exc)) from None
    return texts, k, single, chosen


class _CatchAll:
    """The last handler: an unexpected error is logged once (its traceback
    without the values of variables, so no token or body reaches the log)
    and answered 500; a client gone mid-request is not an error."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except ClientDisconnect:
            return
        except Exception as exc:
            if scope["type"] != "http":
                raise
            logger.opt(exception=exc).error("Internal error on {} ({})", scope.get("path"), type(exc).__name__)
            if not started:
                await _error(500, f"Internal error ({type(exc).__name__}); see the server's log.")(scope, receive, send)


def create_app(service: SearchService, *, token: str | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               metrics: ServiceMetrics | None = None, hosts: HostPolicy | None = None,
               limits: RequestLimits | None = None) -> Starlette:
    """The ASGI application over ``service``. ``hosts``: the ``Host`` names
    it answers to (default: loopback names and IP literals)."""
    metrics = metrics or ServiceMetrics(service)
    admission = Admission(limits or RequestLimits())

    async def index(request: Request) -> Response:
        return HTMLResponse(_static("index.html"))

    async def login(request: Request) -> Response:
        if request.method == "POST":
            body = (await _body(request, 4096)).decode("utf-8", "replace")
            given = parse_qs(body).get("token", [""])[0]  # a urlencoded form: no multipart parser needed
            if token and hmac.compare_digest(given.encode(), token.encode()):
                response = RedirectResponse("/", status_code=303)
                response.set_cookie(COOKIE, given, httponly=True, samesite="strict")
                return response
            wrong = "<p class=error role=alert>Wrong token: check it and try again.</p>"
            return HTMLResponse(_static("login.html").replace("<!--error-->", wrong), status_code=401)
        return HTMLResponse(_static("login.html"))

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})  # nothing about the index: it needs no token

    async def ready(request: Request) -> Response:
        ok, reason = service.readiness()
        return JSONResponse({"ready": ok, "reason": reason, "pages": service.pages, "model": service.model_name,
                             "text": service.has_text}, status_code=200 if ok else 503)

    async def metrics_endpoint(request: Request) -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    async def search(request: Request) -> Response:
        started = time.perf_counter()
        notices: list[str] = []
        data = await _json_body(request, max_body_bytes)
        queries, k, single, mode = _queries(data, service, notices)
        with_text = data.get("text", False)  # the pages' text, only when asked for
        if not isinstance(with_text, bool):
            raise ClientError("'text' must be true or false.")
        exact = data.get("exact", False)  # MaxSim over every page instead of the candidate stage's
        if not isinstance(exact, bool):
            raise ClientError("'exact' must be true or false.")
        cost = estimate(queries, k, mode, service.pages, admission.limits)
        if (too_large := cost.refusal(admission.limits, len(queries), k)) is not None:
            raise ClientError(too_large, 413)
        with admission.hold(cost.work) as admitted:
            if not admitted:
                raise ClientError("The server is busy with other searches; try again in a moment.", 429,
                                  {"Retry-After": "2"})
            answer = await asyncio.wrap_future(service.search(queries, k, mode, exact))
        texts = {}
        if with_text:
            pairs = [(h.doc_hash, h.page) for hits in answer.hits for h in hits]
            texts = await asyncio.wrap_future(service.page_texts(pairs))
        results = [{"query": q, "hits": [
            {"rank": n, "path": h.path, "page": h.page, "score": round(h.score, 4), "doc_hash": h.doc_hash,
             "signals": dict(h.signals), "image": f"/pages/{h.doc_hash}/{h.page}.png",
             **({"text": texts.get((h.doc_hash, h.page), "")} if with_text else {})}
            for n, h in enumerate(hits, 1)]}
            for q, hits in zip(queries, answer.hits, strict=True)]
        seconds = time.perf_counter() - started
        metrics.queries.inc(len(queries))
        metrics.latency.observe(seconds)
        body: dict[str, Any] = {
            "model": answer.model, "text_model": service.text_model, "device": answer.device, "mode": answer.mode,
            "ms": round(seconds * 1000, 2),
            "compute_ms": round(answer.compute_ms, 2), "batch_queries": answer.batch_queries,
            "model_load_ms": None if answer.model_load_ms is None else round(answer.model_load_ms, 1),
            "pages_searched": service.pages, "pages_scored": answer.pages_scored,
            "notices": notices + answer.notices, "results": results,
        }
        if single:
            body["query"], body["hits"] = results[0]["query"], results[0]["hits"]
        return JSONResponse(body)

    async def page_image(request: Request) -> Response:
        doc_hash = request.path_params["doc_hash"]
        try:
            page = int(request.path_params["page"])
            width = int(request.query_params.get("width", "640"))
        except ValueError:
            raise ClientError("Page and width must be whole numbers.") from None
        if not 16 <= width <= 4000:
            raise ClientError("'width' must be from 16 to 4000 pixels.")
        data = await asyncio.to_thread(service.page_png, doc_hash, page, width)
        return Response(data, media_type="image/png", headers={"Cache-Control": "private, max-age=3600"})

    async def heatmap(request: Request) -> Response:
        data = await _json_body(request, max_body_bytes)
        doc_hash, page, query = data.get("doc_hash"), data.get("page"), data.get("query")
        if (not isinstance(doc_hash, str) or not isinstance(page, int) or isinstance(page, bool)
                or not isinstance(query, str) or not query.strip()):
            raise ClientError("Give 'doc_hash' (string), 'page' (integer) and 'query' (a non-empty string).")
        text = _query(query, service.config.max_query_chars, [])
        return JSONResponse(await asyncio.wrap_future(service.heatmap(doc_hash, page, text)))

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, str(exc.detail))

    async def ragged_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RaggedError)
        headers = exc.headers if isinstance(exc, ServeError) else None
        return _error(http_status(exc), str(exc), headers)  # the request's fault (4xx) or the server's (503), by kind

    routes = [
        Route("/", index),
        Route("/login", login, methods=["GET", "POST"]),
        Route("/health", health),
        Route("/ready", ready),
        Route("/metrics", metrics_endpoint),
        Route("/search", search, methods=["POST"]),
        Route("/heatmap", heatmap, methods=["POST"]),
        Route("/pages/{doc_hash}/{page}.png", page_image),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(BrowserGuard, hosts=hosts or HostPolicy(),
                               csp=content_security_policy([_static("index.html"), _static("login.html")])),
                    Middleware(_Guard, token=token, max_body=max_body_bytes), Middleware(_CatchAll)],
        exception_handlers={
            HTTPException: http_error, RaggedError: ragged_error,
        },
    )
