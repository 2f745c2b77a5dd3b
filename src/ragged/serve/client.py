"""Talking to a running ``ragged serve`` from the command line (standard
library only: a search through a server starts in a fraction of a second)."""

from __future__ import annotations

import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from loguru import logger

from ragged.errors import ServerError
from ragged.serve.record import trusted_url


def check_url(url: str) -> str:
    """``url`` if it is an http(s) URL of a server, else a clear error."""
    try:  # urlsplit itself refuses some addresses ("http://[::1:8000")
        parts = urllib.parse.urlsplit(url) if "://" in url else None
        port_ok = parts is not None and (parts.port is None or parts.port > 0)
    except ValueError:
        parts, port_ok = None, False
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
        raise ServerError(f"{url!r} is not a server address: give one like http://127.0.0.1:8000.")
    return url


def _request(url: str, body: dict[str, Any] | None, token: str | None, timeout: float) -> dict[str, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        try:
            message = json.loads(exc.read()).get("error", exc.reason)
        except (ValueError, AttributeError, OSError, http.client.HTTPException):
            message = exc.reason
        raise ServerError(f"The server at {url} answered {exc.code}: {message}") from None
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        raise ServerError(f"Cannot reach the server at {url} ({exc}); is 'ragged serve' running?") from None
    try:
        answer = json.loads(raw)
    except ValueError:  # not JSON, or not UTF-8
        answer = None
    if not isinstance(answer, dict):
        raise ServerError(f"The server at {url} did not answer as 'ragged serve' does; check --server.")
    return answer


def find_server(index_dir: Path) -> str | None:
    """The URL of a live server of ``index_dir``, or None (no record, a stale
    one, or one that cannot be trusted with the token: see
    :func:`~ragged.serve.record.untrusted`)."""
    url = trusted_url(index_dir)
    if url is None:
        return None
    try:
        check_url(url)
        health = _request(url.rstrip("/") + "/health", None, None, timeout=1.0)  # /health needs no token
    except ServerError as exc:
        logger.debug("ignoring the server record: {}", exc)
        return None
    return url if health.get("status") == "ok" else None


def remote_search(url: str, query: str, k: int, token: str | None = None, timeout: float = 600,
                  mode: str = "auto") -> dict[str, Any]:
    """The server's answer to one query (its JSON body)."""
    check_url(url)  # the address as given, before a path is added to it
    return _request(url.rstrip("/") + "/search", {"query": query, "k": k, "mode": mode},
                    token or os.environ.get("RAGGED_TOKEN"), timeout)
