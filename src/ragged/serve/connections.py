"""Connections the server holds: bounded in time and in number.

uvicorn closes a keep-alive connection left idle after an answer, but
nothing bounds how long a client may take over a request's head or body,
nor how many connections it may hold: a thousand clients trickling their
headers a byte at a time would use up the process's file descriptors, and
asyncio's accept loop then logs a traceback for every attempt.
:func:`protocol_class` makes uvicorn's h11 protocol keep three rules:

* a request's head must arrive within ``header_timeout_s`` of the
  connection (or of the previous answer on it), and its body within
  ``body_timeout_s`` of the head; a deadline is not moved by each byte
  that trickles in, and past it the connection is closed;
* at most ``cap`` connections are held: a new one beyond it closes the
  oldest connection still waiting for a request head (so a crowd of slow
  clients cannot lock out a quick one); when every connection is busy with
  a request, the new one is answered 503 and closed;
* nothing is logged per connection: :class:`QuietLog` prints one line per
  kind of event a minute, with a count (also for asyncio's accept errors
  and uvicorn's own warnings).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import h11
from loguru import logger
from uvicorn.protocols.http.h11_impl import H11Protocol

RESERVED_FDS = 128  # descriptors kept for the index, the models and the log, beyond connections
BACKLOG = 128  # connections the kernel queues, and asyncio accepts in one go before any is counted


@dataclass(frozen=True)
class ConnectionLimits:
    """How long a request may take to arrive, and how many connections are held."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_connections: int = 1000


def connection_cap(max_connections: int) -> int:
    """Connections the server holds at most: ``max_connections``, or fewer
    where the process's open-file limit would not leave room for the rest.
    The soft limit is raised to the hard one first (as Go programs do)."""
    try:
        import resource
    except ImportError:  # Windows: no such limit to mind
        return max_connections
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        wanted = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
        if wanted > soft:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
                soft = wanted
            except (ValueError, OSError):
                pass
    return max(8, min(max_connections, soft - RESERVED_FDS - BACKLOG))


class QuietLog:
    """At most one warning line per kind of event every ``interval_s``
    seconds, saying how many were left out since the last one."""

    def __init__(self, interval_s: float = 60.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._skipped: dict[str, int] = {}

    def allow(self, kind: str) -> tuple[bool, int]:
        """(print it now, how many of this kind were left out before it)."""
        now = time.monotonic()
        last = self._last.get(kind)
        if last is not None and now - last < self.interval_s:
            self._skipped[kind] = self._skipped.get(kind, 0) + 1
            return False, 0
        self._last[kind] = now
        return True, self._skipped.pop(kind, 0)

    def note(self, kind: str, text: str) -> None:
        """Log ``text`` unless a line of ``kind`` was logged lately."""
        show, skipped = self.allow(kind)
        if show:
            more = f" ({skipped:,} more like it since the last such line)" if skipped else ""
            logger.warning("{}{}", text, more)

    def asyncio_handler(self, loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        """For ``loop.set_exception_handler``: one line, no traceback (an
        accept that fails for want of descriptors is retried by asyncio)."""
        message = str(context.get("message") or "asyncio error")
        exc = context.get("exception")
        self.note(f"asyncio:{message}", f"{message}: {exc}" if exc is not None else message)

    def logging_filter(self) -> logging.Filter:
        """For uvicorn's logger: its warnings rate-limited, and the stop's
        cancelled requests (reported by the stop's own line) left out."""
        quiet = self

        class _Filter(logging.Filter):
            def filter(self, record: logging.LogRecord) -> bool:
                if record.exc_info and isinstance(record.exc_info[1], asyncio.CancelledError):
                    return False
                show, skipped = quiet.allow(f"uvicorn:{record.msg}")
                if show and skipped:
                    record.msg = f"{record.getMessage()} ({skipped:,} more like it since the last such line)"
                    record.args = ()
                return show

        return _Filter()


_BUSY = b'{"error": "Too many connections; try again in a moment."}'
_REFUSED = (b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"retry-after: 1\r\ncontent-length: %d\r\n\r\n%s" % (len(_BUSY), _BUSY))


def protocol_class(limits: ConnectionLimits, cap: int, quiet: QuietLog) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the deadlines and the cap (one class per server)."""
    waiting: OrderedDict[Any, None] = OrderedDict()  # connections waiting for a request head, oldest first

    class GuardedH11Protocol(H11Protocol):
        _phase = ""  # "head", "body" or "busy" (a request being answered)
        _deadline: asyncio.TimerHandle | None = None
        _refused = False

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > cap:
                victim = next((c for c in waiting if c is not self), None)
                if victim is None:  # every connection is busy answering: refuse this one
                    quiet.note("refused", f"At the cap of {cap} connections, all busy: new ones are refused.")
                    self._refuse()
                    return
                quiet.note("evicted", f"At the cap of {cap} connections: the oldest idle ones are closed.")
                victim._close()
            self._track()

        def data_received(self, data: bytes) -> None:
            if self._refused:  # its request read (closing with it unread would reset the 503 away): done
                self.transport.close()
                return
            super().data_received(data)

        def handle_events(self) -> None:
            super().handle_events()
            self._track()

        def _refuse(self) -> None:
            """Answer 503 before reading anything, then close once the client had time to send its request."""
            self._refused = True
            self.transport.write(_REFUSED)
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(0.5, self.transport.close)  # a client that sends nothing

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._track()

        def connection_lost(self, exc: Exception | None) -> None:
            super().connection_lost(exc)
            self._disarm()
            waiting.pop(self, None)

        def _track(self) -> None:
            """Arm the deadline of the phase the connection is in."""
            if self.transport is None or self.transport.is_closing():
                return
            state = self.conn.their_state
            phase = "head" if state is h11.IDLE else "body" if state is h11.SEND_BODY else "busy"
            if phase == self._phase:
                return
            self._phase = phase
            self._disarm()
            if phase == "head":
                waiting[self] = None
                waiting.move_to_end(self)
                self._deadline = self.loop.call_later(limits.header_timeout_s, self._expire)
            else:
                waiting.pop(self, None)
                if phase == "body":
                    self._deadline = self.loop.call_later(limits.body_timeout_s, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            quiet.note("slow", f"Closed connections that took over {limits.header_timeout_s:g} s to send a "
                               f"request's head or {limits.body_timeout_s:g} s its body.")
            self._close()

        def _close(self) -> None:
            waiting.pop(self, None)
            self._disarm()
            if not self.transport.is_closing():
                self.transport.close()

    return GuardedH11Protocol


def server_options(limits: ConnectionLimits, quiet: QuietLog) -> dict[str, Any]:
    """uvicorn.Config keywords that put the limits in place."""
    return {"http": protocol_class(limits, connection_cap(limits.max_connections), quiet), "backlog": BACKLOG}


class RequestTally:
    """ASGI middleware counting requests in flight, so that the stop says
    what it did: how many it answered, how many the grace period cut off,
    and how many ended without an answer (the client gone, or too slow)."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.running = 0
        self.at_stop: int | None = None  # requests running when the stop began (None: not stopping)
        self.answered = 0  # from the stop on: answered in full
        self.cut = 0  # cancelled when the grace period ran out
        self.gone = 0  # ended without an answer sent

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        done = False

        async def counted(message: Any) -> None:
            nonlocal done
            await send(message)
            done = done or (message["type"] == "http.response.body" and not message.get("more_body", False))

        self.running += 1
        try:
            await self.app(scope, receive, counted)
        except asyncio.CancelledError:
            self.cut += self.at_stop is not None
            raise
        finally:
            self.running -= 1
        if self.at_stop is not None:
            if done:
                self.answered += 1
            else:
                self.gone += 1

    def stopping(self) -> None:
        """The stop began: count from here."""
        self.at_stop = self.running

    def summary(self, grace_s: float) -> str:
        """One sentence: what happened to the requests in flight at the stop."""
        total = self.answered + self.cut + self.gone  # those in flight, and any that arrived as it began
        if not total:
            return "no request was in flight"
        parts = [f"{total} request(s) in flight"]
        if self.answered:
            parts.append(f"{self.answered} answered")
        if self.cut:
            parts.append(f"{self.cut} cut off after the {grace_s:g} s grace period")
        if self.gone:
            parts.append(f"{self.gone} ended unanswered (the client left or was too slow)")
        return ", ".join(parts)
