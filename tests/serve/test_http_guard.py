"""The HTTP face against the browser next door and odd requests (issue 18):
Host and Origin checks, security headers, the token kept out of the log,
odd Unicode and nested JSON, and a request's cost bounded before it runs.
Each test names the item of the issue it covers."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from ragged.serve.app import create_app
from ragged.serve.service import SearchService, ServiceConfig

TOKEN = "tok-5d1f0c2a9e-never-in-a-log"
LOCAL = "http://127.0.0.1:8000"
MODES = ["vision", "text", "keyword", "hybrid"]


@pytest.fixture(scope="module")
def service(sample_index: Path, model_cache: Path) -> Iterator[SearchService]:
    running = SearchService(ServiceConfig(index_dir=sample_index, cache_dir=model_cache, idle_unload_s=None))
    running.start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(service: SearchService) -> Iterator[TestClient]:
    with TestClient(create_app(service), raise_server_exceptions=False, base_url=LOCAL) as test_client:
        yield test_client


def _search(client: TestClient, body: Any, **headers: str) -> Any:
    return client.post("/search", content=json.dumps(body).encode(),
                       headers={"content-type": "application/json", **headers})


# -- item 1: DNS rebinding -------------------------------------------------------------------------------------

@pytest.mark.parametrize("host", ["evil.com", "evil.com:8000", "attacker.example:80", "127.0.0.1.nip.io:8000"])
def test_a_foreign_host_name_is_refused_everywhere(client: TestClient, service: SearchService, host: str) -> None:
    """Item 1: a page whose name was made to resolve to 127.0.0.1 sends its own
    name as Host; neither the hits, the web page nor a page image is served."""
    record = service.resident.catalog.pages[0] if service.resident else None
    assert record is not None
    for method, path in [("POST", "/search"), ("GET", "/"), ("GET", f"/pages/{record.doc_hash}/{record.page}.png"),
                         ("GET", "/ready"), ("GET", "/metrics")]:
        response = client.request(method, path, headers={"host": host, "content-type": "application/json"},
                                  content=b'{"query": "revenue"}' if method == "POST" else None)
        assert response.status_code == 403, (method, path, response.text[:200])
        assert "--allowed-host" in response.json()["error"]
        assert "doc_hash" not in response.text and "<html" not in response.text.lower()


@pytest.mark.parametrize("host", ["127.0.0.1:8000", "localhost:8000", "[::1]:8000", "localhost", "app.localhost:80",
                                  "192.168.1.20:8000"])
def test_loopback_names_and_addresses_are_answered(client: TestClient, host: str) -> None:
    """Item 1: what a user types (and any IP address: a rebinding needs a name)."""
    response = _search(client, {"query": "tart", "k": 1}, host=host)
    assert response.status_code == 200, response.text


def test_allowed_host_adds_a_name(service: SearchService) -> None:
    """Item 1: --allowed-host (behind a proxy that sends its own name)."""
    from ragged.serve.security import HostPolicy

    policy = HostPolicy.for_server("127.0.0.1", ["search.example.org"])
    with TestClient(create_app(service, hosts=policy), base_url="http://search.example.org") as proxied:
        assert _search(proxied, {"query": "tart", "k": 1}).status_code == 200
        assert _search(proxied, {"query": "tart", "k": 1}, host="evil.com").status_code == 403
    anything = HostPolicy.for_server("0.0.0.0", ["*"])
    assert anything.allows("whatever.example") and HostPolicy().allows(None)
    assert HostPolicy.for_server("myhost.lan").allows("MyHost.LAN:8000")


# -- item 2: cross-site requests -------------------------------------------------------------------------------

def test_a_cross_site_text_plain_post_is_refused(client: TestClient) -> None:
    """Item 2: the 'simple request' any site can send without asking first."""
    response = client.post("/search", content=b'{"query": "revenue"}',
                           headers={"content-type": "text/plain", "origin": "http://evil.com"})
    assert response.status_code == 403 and "origin" in response.json()["error"]
    assert "hits" not in response.text


@pytest.mark.parametrize(("headers", "status"), [
    ({"content-type": "text/plain"}, 415),  # no Origin (not a browser), but not JSON either
    ({"content-type": "application/x-www-form-urlencoded"}, 415),
    ({"content-type": "application/json", "origin": "null"}, 403),  # a sandboxed frame, a file: page
    ({"content-type": "application/json", "origin": "http://localhost:8001"}, 403),  # another local port
    ({"content-type": "application/json", "origin": "http://127.0.0.1:8000"}, 200),  # the page itself
    ({"content-type": "application/json; charset=utf-8"}, 200),  # a script
])
def test_search_needs_json_and_its_own_origin(client: TestClient, headers: dict[str, str], status: int) -> None:
    """Item 2: JSON content type for search and heat-map; Origin same or absent."""
    response = client.post("/search", content=b'{"query": "tart", "k": 1}', headers=headers)
    assert response.status_code == status, response.text
    heat = client.post("/heatmap", content=b'{"doc_hash": "x", "page": 1, "query": "tart"}', headers=headers)
    assert heat.status_code == (404 if status == 200 else status)  # past the guard: an unknown document


def test_cross_site_fetches_are_refused_but_a_link_to_the_page_works(client: TestClient,
                                                                     service: SearchService) -> None:
    """Item 2: Fetch Metadata: an <img> or fetch() of another site gets nothing;
    following a link to the web page still opens it."""
    record = service.resident.catalog.pages[0] if service.resident else None
    assert record is not None
    image = client.get(f"/pages/{record.doc_hash}/{record.page}.png",
                       headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "no-cors", "sec-fetch-dest": "image"})
    assert image.status_code == 403
    ready = client.get("/ready", headers={"sec-fetch-site": "same-site", "sec-fetch-mode": "cors"})
    assert ready.status_code == 403
    link = client.get("/", headers={"sec-fetch-site": "cross-site", "sec-fetch-mode": "navigate"})
    assert link.status_code == 200 and "<form" in link.text
    own = client.get("/ready", headers={"sec-fetch-site": "same-origin", "sec-fetch-mode": "cors"})
    assert own.status_code == 200


def test_cross_site_searches_never_flip_ready(client: TestClient) -> None:
    """Items 2 and 6: refused requests are not failed searches."""
    for _ in range(5):
        client.post("/search", content=b'{"query": "x"}', headers={"content-type": "text/plain",
                                                                     "origin": "http://evil.com"})
    assert client.get("/ready").status_code == 200


# -- item 6: security headers, /health ------------------------------------------------------------------------

def _hash(block: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(block.encode()).digest()).decode() + "'"


@pytest.mark.parametrize("path", ["/", "/login"])
def test_html_answers_carry_the_security_headers(client: TestClient, path: str) -> None:
    """Item 6: CSP (only the page's own inline script and style), no framing, nosniff, no referrer."""
    response = client.get(path)
    assert response.status_code == 200 and "text/html" in response.headers["content-type"]
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
    for tag in ("script", "style"):
        for block in re.findall(rf"<{tag}>(.*?)</{tag}>", response.text, flags=re.DOTALL):
            assert _hash(block) in csp  # the page's own code runs; nothing else would
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_json_answers_are_not_sniffed_or_cached(client: TestClient) -> None:
    """Item 6: hits are private: not kept by a shared cache, never read as HTML."""
    response = _search(client, {"query": "tart", "k": 1})
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["cache-control"] == "no-store"


def test_health_says_only_ok(client: TestClient) -> None:
    """Item 6: /health needs no token, so it tells nothing about the index."""
    response = client.get("/health")
    assert response.status_code == 200 and response.json() == {"status": "ok"}


# -- item 3: the token in the log ------------------------------------------------------------------------------

def test_a_failing_authenticated_request_logs_neither_token_nor_body(
        service: SearchService, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Item 3: with the command line's logging (what `ragged serve` runs with),
    a request that reaches the 500 handler logs one error with its traceback,
    but no frame's variables: not the token, not the request body."""
    from loguru import logger

    from ragged.cli.main import _setup_logging

    secret_body = "private-query-7c1e about the merger"

    def broken(*args: object, **kwargs: object) -> Future[Any]:
        raise RuntimeError("the worker fell over")

    monkeypatch.setattr(service, "search", broken)
    _setup_logging(False)
    try:
        with TestClient(create_app(service, token=TOKEN), raise_server_exceptions=False, base_url=LOCAL) as guarded:
            response = _search(guarded, {"query": secret_body}, authorization=f"Bearer {TOKEN}")
    finally:
        logger.remove()
        logger.add(lambda m: None)  # as the suite had it: nothing printed
    assert response.status_code == 500 and "RuntimeError" in response.json()["error"]
    log = capsys.readouterr().err
    assert "Internal error on /search" in log and "the worker fell over" in log
    assert TOKEN not in log and "private-query-7c1e" not in log
    assert "Bearer" not in log


# -- item 8: lone surrogates -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", MODES)
def test_lone_surrogates_get_a_result_in_every_mode(client: TestClient, mode: str) -> None:
    """Item 8: "\\ud800" in JSON is a valid escape; the query is searched with it
    replaced (and says so), never a 500 or 503."""
    body = b'{"query": "tart \\ud800 lemon\\udcff", "k": 2, "mode": "' + mode.encode() + b'"}'
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["mode"] == mode and any("not valid Unicode" in n for n in data["notices"])
    assert data["query"] == "tart \ufffd lemon\ufffd"


def test_a_query_of_nothing_but_surrogates_is_one_clear_400(client: TestClient) -> None:
    """Item 8: nothing left to search: a client error, not a failed search."""
    for _ in range(4):
        response = client.post("/search", content=b'{"query": "\\udfff\\ud800", "mode": "hybrid"}',
                               headers={"content-type": "application/json"})
        assert response.status_code == 400 and "not valid Unicode" in response.json()["error"]
    assert client.get("/ready").status_code == 200  # client errors never flip /ready


def test_surrogates_in_several_queries_and_in_the_heatmap(client: TestClient) -> None:
    """Item 8: the batch form and /heatmap take the same repair."""
    body = b'{"queries": ["\\ud83d tart", "rent \\udc00"], "k": 1, "mode": "keyword"}'
    response = client.post("/search", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 200 and len(response.json()["results"]) == 2
    hit = _search(client, {"query": "lemon tart", "k": 1, "mode": "vision"}).json()["hits"][0]
    heat = client.post("/heatmap", content=json.dumps({"doc_hash": hit["doc_hash"], "page": hit["page"],
                                                       "query": "tart \ud800"}).encode(),
                       headers={"content-type": "application/json"})
    assert heat.status_code == 200 and heat.json()["words"]
    for _ in range(3):
        assert client.post("/search", content=body, headers={"content-type": "application/json"}).status_code == 200
    assert client.get("/ready").status_code == 200


# -- item 9: nested JSON ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/search", "/heatmap"])
def test_deeply_nested_json_is_a_400(client: TestClient, path: str) -> None:
    """Item 9: 30,000 brackets (60 KB) exhaust the JSON parser's recursion: 400, not 500."""
    body = b'{"query": ' + b"[" * 30_000 + b"]" * 30_000 + b"}"
    assert len(body) < 64 * 1024
    response = client.post(path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400 and "nested too deeply" in response.json()["error"]


# -- item 14: a request's cost -------------------------------------------------------------------------------------

def test_the_issues_request_is_refused_before_it_runs() -> None:
    """Item 14: 32 queries x 1,900 characters, k=1000, over 3,000 pages: too much
    work and too large an answer (it held the worker for 129 s and answered
    8.9 MB); an ordinary batch over 10,000 pages is not."""
    from ragged.query.modes import Mode
    from ragged.serve.budget import RequestLimits, estimate

    limits = RequestLimits()
    huge = estimate(["revenue growth " * 126] * 32, 1000, Mode.HYBRID, 3000, limits)
    assert huge.refusal(limits, 32, 1000) is not None
    heavy = estimate(["revenue growth " * 126] * 32, 10, Mode.HYBRID, 3000, limits)
    assert "query tokens x pages" in (heavy.refusal(limits, 32, 10) or "")
    ordinary = estimate(["what was the revenue in the third quarter"] * 32, 10, Mode.HYBRID, 10_000, limits)
    assert ordinary.refusal(limits, 32, 10) is None
    keyword = estimate(["revenue growth " * 126] * 32, 10, Mode.KEYWORD, 3000, limits)
    assert keyword.refusal(limits, 32, 10) is None  # no vectors scored per token


def test_too_large_a_request_is_a_413_that_says_why(service: SearchService) -> None:
    """Item 14: the server refuses before queueing, naming the limit."""
    from ragged.serve.budget import RequestLimits

    with TestClient(create_app(service, limits=RequestLimits(max_work=2_000, max_hits=20)),
                    base_url=LOCAL) as small:
        many = _search(small, {"queries": ["tart"] * 8, "k": 5})
        assert many.status_code == 413 and "40 hits" in many.json()["error"] and "lower 'k'" in many.json()["error"]
        long = _search(small, {"query": "lemon " * 300, "mode": "vision"})
        assert long.status_code == 413 and "fewer or shorter queries" in long.json()["error"]
        assert _search(small, {"query": "lemon " * 300, "mode": "keyword"}).status_code == 200
        assert small.get("/ready").status_code == 200


def test_a_full_queue_answers_429_with_retry_after(service: SearchService, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 14: requests admitted but unanswered are bounded; the next gets 429."""
    from ragged.serve.budget import RequestLimits

    real = service.search
    gate, called = threading.Event(), threading.Event()

    def held(*args: Any, **kwargs: Any) -> Future[Any]:
        future: Future[Any] = Future()
        called.set()

        def answer() -> None:
            gate.wait(30)
            try:
                future.set_result(real(*args, **kwargs).result(60))
            except BaseException as exc:
                future.set_exception(exc)

        threading.Thread(target=answer, daemon=True).start()
        return future

    monkeypatch.setattr(service, "search", held)
    limits = RequestLimits(max_queued_work=2_000)  # the first request below alone is ~3,100: admitted, as alone
    with TestClient(create_app(service, limits=limits), base_url=LOCAL) as busy:
        first: list[int] = []
        worker = threading.Thread(target=lambda: first.append(
            _search(busy, {"query": "tart " * 300, "mode": "vision"}).status_code))
        worker.start()
        try:
            assert called.wait(30)  # admitted, and waiting for its answer
            refused = _search(busy, {"query": "lemon", "mode": "vision"})
            assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
            assert "busy" in refused.json()["error"]
        finally:
            gate.set()
            worker.join(60)
        assert first == [200]
        assert _search(busy, {"query": "lemon", "mode": "vision"}).status_code == 200  # drained: admitted again
