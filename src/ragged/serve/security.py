"""What a web page on another site must not get from the server.

A server on loopback is reachable from every page the user's browser
opens. Three checks keep those pages out, before the token check and any
handler (the bar is Jupyter's Host and Origin checks and Ollama's
``OLLAMA_ORIGINS``):

* **Host** (DNS rebinding: a site whose name is made to resolve to
  127.0.0.1 sends its own name as ``Host``): only loopback names, IP
  literals (a rebinding needs a name) and the names given with
  ``--allowed-host`` are answered; anything else gets 403.
* **Cross-site requests**: a state-changing or search request (any method
  but GET and HEAD) must come from the page's own origin (``Origin`` equal
  to the ``Host`` asked for) or from no browser at all (no ``Origin``), and
  ``/search`` and ``/heatmap`` must say ``Content-Type: application/json``,
  which no form or ``no-cors`` request of another site can send without
  the browser asking first. A browser's ``Sec-Fetch-Site`` saying
  ``cross-site`` or ``same-site`` is refused too, except for following a
  link to the web page itself.
* **Headers on every answer**: a Content-Security-Policy that allows only
  the pages' own inline script and style (by hash), no framing
  (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``), ``nosniff``,
  no referrer, resources for this origin only, and no caching of answers
  that do not set their own.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from starlette.types import ASGIApp, Message, Receive, Scope, Send

SAFE_METHODS = frozenset({"GET", "HEAD"})
JSON_PATHS = frozenset({"/search", "/heatmap"})  # bodies read as JSON: they must say so
PAGES = frozenset({"/", "/login"})  # what a link from another site may open
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header: port and IPv6 brackets removed,
    lower case, no trailing dot."""
    host = host.strip().lower()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostPolicy:
    """The ``Host`` names the server answers to."""

    names: frozenset[str] = frozenset({"localhost"})
    any_host: bool = False  # --allowed-host '*': no check (behind a proxy that checks it)

    @classmethod
    def for_server(cls, listen_host: str = "127.0.0.1", allowed: Iterable[str] = ()) -> HostPolicy:
        """Loopback names, the name the server listens on, and ``allowed``."""
        extra = [a.strip() for a in allowed if a.strip()]
        names = {"localhost", *(_host_name(a) for a in extra if a != "*")}
        if listen_host not in WILDCARDS and not _is_ip(_host_name(listen_host)):
            names.add(_host_name(listen_host))
        return cls(frozenset(names), any_host="*" in extra)

    def allows(self, host: str | None) -> bool:
        """True for a ``Host`` this server answers to (no header: not a browser)."""
        if host is None or self.any_host:
            return True
        name = _host_name(host)
        return _is_ip(name) or name in self.names or name.endswith(".localhost")


def _inline_hashes(html: str, tag: str) -> list[str]:
    """CSP source expressions for each inline ``<tag>`` block of ``html``."""
    blocks = re.findall(rf"<{tag}>(.*?)</{tag}>", html, flags=re.DOTALL)
    return [f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'" for b in blocks]


def content_security_policy(pages: Sequence[str]) -> str:
    """The policy for the web pages: their own inline script and style only; images
    from the server itself, or blobs the page made from its own fetches."""
    scripts = " ".join(h for page in pages for h in _inline_hashes(page, "script")) or "'none'"
    styles = " ".join(h for page in pages for h in _inline_hashes(page, "style")) or "'none'"
    return (f"default-src 'none'; script-src {scripts}; style-src {styles}; img-src 'self' blob:; connect-src 'self'; "
            "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}


class BrowserGuard:
    """ASGI middleware: the Host, Origin and content-type checks, and the
    security headers on every answer (see the module's docstring)."""

    def __init__(self, app: ASGIApp, hosts: HostPolicy, csp: str) -> None:
        self.app, self.hosts = app, hosts
        self.extra = [(b"content-security-policy", csp.encode()), (b"x-frame-options", b"DENY"),
                      (b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                      (b"cross-origin-resource-policy", b"same-origin")]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(k.lower() == b"cache-control" for k, _ in headers):
                    headers.append((b"cache-control", b"no-store"))
                message = {**message, "headers": headers + self.extra}
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            status, text = refusal
            body = json.dumps({"error": text}).encode()
            await send_with_headers({"type": "http.response.start", "status": status, "headers": [
                (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
            await send({"type": "http.response.body", "body": body})
            return
        await self.app(scope, receive, send_with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str] | None:
        """(status, reason) when the request must not be answered, else None."""
        headers = _headers(scope)
        method, path = scope["method"], scope["path"]
        host = headers.get("host")
        if not self.hosts.allows(host):
            return 403, (f"This server does not answer to the name {_host_name(host or '')!r}: open it at "
                         "http://127.0.0.1 or http://localhost, or start it with --allowed-host NAME.")
        site = headers.get("sec-fetch-site", "")
        if site in ("cross-site", "same-site") and not (
                method in SAFE_METHODS and path in PAGES and headers.get("sec-fetch-mode") == "navigate"):
            return 403, "Requests from other sites are refused: use the page this server serves."
        if method in SAFE_METHODS:
            return None
        origin = headers.get("origin")
        if origin is not None and not _same_origin(origin, host):
            return 403, f"Requests from the origin {origin[:100]!r} are refused: use the page this server serves."
        if path in JSON_PATHS:
            kind = headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                return 415, "Send the body as JSON, with 'Content-Type: application/json'."
        return None


def _same_origin(origin: str, host: str | None) -> bool:
    """True when ``origin`` (scheme://name[:port]) names the ``Host`` asked for."""
    if host is None or "://" not in origin:
        return False  # includes the opaque origin "null"
    netloc = origin.split("://", 1)[1].rstrip("/").lower()
    return netloc == host.strip().lower()
