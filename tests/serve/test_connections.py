"""Slow and numerous connections (issue 18, item 4) and an honest stop (item 14).

The protocol's rules are tried on a small app under a real uvicorn in this
process, with deadlines of a fraction of a second; the whole server is
tried as a process with a low open-file limit. Sockets are loopback only,
at most a few hundred, each test bounded in time."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from loguru import logger

from ragged.serve.connections import ConnectionLimits, QuietLog, RequestTally, server_options
from tests.serve.conftest import free_port, http

RELEASE = threading.Event()


async def app(scope: Any, receive: Any, send: Any) -> None:
    """/ answers at once, /echo reads the body, /hold waits for RELEASE."""
    if scope["type"] != "http":
        return
    body = b""
    if scope["path"] == "/echo":
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if message["type"] == "http.disconnect":
                return
    while scope["path"] == "/hold" and not RELEASE.is_set():
        await asyncio.sleep(0.02)
    text = str(len(body)).encode()
    headers = [(b"content-length", str(len(text)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": text})


class Running:
    """uvicorn with the limits, in a thread of this process."""

    def __init__(self, limits: ConnectionLimits, quiet: QuietLog) -> None:
        self.port = free_port()
        config = uvicorn.Config(RequestTally(app), host="127.0.0.1", port=self.port, log_level="warning",
                                lifespan="off", **server_options(limits, quiet))
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        end = time.monotonic() + 10
        while not self.server.started and time.monotonic() < end:
            time.sleep(0.02)
        assert self.server.started

    def connections(self) -> int:
        return len(self.server.server_state.connections)

    def stop(self) -> None:
        RELEASE.set()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def lines() -> Iterator[list[str]]:
    got: list[str] = []
    sink = logger.add(lambda m: got.append(str(m)), level="WARNING", format="{message}")
    yield got
    logger.remove(sink)


@pytest.fixture
def running(lines: list[str]) -> Iterator[Running]:
    RELEASE.clear()
    server = Running(ConnectionLimits(header_timeout_s=0.6, body_timeout_s=0.6, max_connections=8), QuietLog())
    yield server
    server.stop()


def _closed_by_server(sock: socket.socket, within: float) -> float | None:
    """Seconds until the server closed ``sock`` (None: still open after ``within``)."""
    started = time.monotonic()
    sock.settimeout(0.05)
    while time.monotonic() - started < within:
        try:
            data = sock.recv(4096)
            if data == b"" or b"HTTP/1.1" in data:
                return time.monotonic() - started
        except TimeoutError:
            pass
        except OSError:
            return time.monotonic() - started
        try:
            sock.sendall(b"x")  # a byte at a time: never enough to finish
        except OSError:
            return time.monotonic() - started
        time.sleep(0.1)
    return None


def _get(port: int, path: str = "/") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(4096):
            data += chunk
        return data


def test_a_trickled_head_is_cut_off_at_its_deadline(running: Running) -> None:
    """Item 4: bytes that keep arriving do not move the head's deadline."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nX-Slow: ")
        took = _closed_by_server(sock, within=5)
    assert took is not None and took < 3
    assert _get(running.port).startswith(b"HTTP/1.1 200")


def test_a_trickled_body_is_cut_off_at_its_deadline(running: Running) -> None:
    """Item 4: a body of 100 bytes sent one byte at a time."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n")
        took = _closed_by_server(sock, within=5)
    assert took is not None and took < 3


def test_an_idle_connection_is_closed_but_a_quick_one_is_answered(running: Running) -> None:
    """Item 4: a connection that never sends anything is closed too."""
    with socket.create_connection(("127.0.0.1", running.port), timeout=5) as idle:
        idle.settimeout(5)
        started = time.monotonic()
        assert idle.recv(10) == b"" and time.monotonic() - started < 3
    assert _get(running.port).startswith(b"HTTP/1.1 200")


def test_the_cap_closes_the_oldest_idle_connections(running: Running, lines: list[str]) -> None:
    """Item 4: 40 connections that send nothing cannot lock out a client
    that asks: the oldest waiting ones are closed, never more than the cap
    are held, and the log says so once."""
    sockets = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(40)]
    try:
        time.sleep(0.2)
        assert running.connections() <= 8
        assert _get(running.port).startswith(b"HTTP/1.1 200")
    finally:
        for sock in sockets:
            sock.close()
    capped = [line for line in lines if "cap of 8 connections" in line]
    assert len(capped) == 1


def test_at_the_cap_with_every_connection_busy_a_new_one_gets_503(running: Running) -> None:
    """Item 4: connections answering requests are never dropped for a newcomer."""
    busy = [socket.create_connection(("127.0.0.1", running.port), timeout=5) for _ in range(8)]
    try:
        for sock in busy:
            sock.sendall(b"GET /hold HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        time.sleep(0.3)
        refused = _get(running.port)
        assert refused.startswith(b"HTTP/1.1 503") and b"Too many connections" in refused
        RELEASE.set()
        for sock in busy:
            sock.settimeout(5)
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        for sock in busy:
            sock.close()


def test_quiet_log_prints_one_line_per_kind_with_a_count(lines: list[str]) -> None:
    """Item 4: a storm of the same event is one line, and the next line counts what was left out."""
    quiet = QuietLog(interval_s=0.3)
    context = {"message": "socket.accept() out of system resource", "exception": OSError(24, "Too many open files")}
    for _ in range(1000):
        quiet.asyncio_handler(None, context)  # type: ignore[arg-type]
        quiet.note("other", "another kind")
    assert len(lines) == 2 and "Too many open files" in lines[0] and "Traceback" not in "".join(lines)
    time.sleep(0.35)
    quiet.asyncio_handler(None, context)  # type: ignore[arg-type]
    assert "999 more like it" in lines[-1]


# -- the whole server ---------------------------------------------------------------------------------------------

def _limited_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))


@pytest.mark.slow
def test_a_crowd_of_slow_clients_with_few_descriptors(sample_index: Path, model_cache: Path, tmp_path: Path) -> None:
    """Item 4 (and 14's stop): a server limited to 256 open files, 300
    clients trickling their headers for 8 s: /health answers throughout,
    the log stays a few lines (it was 42 MB of tracebacks in 9 s), and then
    a stop with a request in flight ends within the grace period and says
    it cut that request off (not that it answered it), and says so."""
    port = free_port()
    log = tmp_path / "serve.log"
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    with log.open("w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "ragged", "serve", "--index", str(sample_index), "--port",
                                 str(port), "--idle-unload", "0", "--grace-period", "3"], env=env,
                                stdout=subprocess.PIPE, stderr=err, text=True, preexec_fn=_limited_fds)
    url = f"http://127.0.0.1:{port}"
    crowd: list[socket.socket] = []
    try:
        end = time.monotonic() + 120
        while time.monotonic() < end:
            try:
                if http(url + "/ready", timeout=2)[0] == 200:
                    break
            except OSError:
                time.sleep(0.2)
        for _ in range(300):
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=2)
                sock.sendall(b"GET /health HTTP/1.1\r\n")
                crowd.append(sock)
            except OSError:
                pass
        answered = []
        for _ in range(8):
            for sock in crowd:
                with contextlib.suppress(OSError):
                    sock.sendall(b"X")
            try:
                answered.append(http(url + "/health", timeout=2)[0])
            except OSError as exc:
                answered.append(repr(exc))  # type: ignore[arg-type]
            time.sleep(0.5)
        assert answered.count(200) >= 7, answered
        for sock in crowd:
            sock.close()
        slow = socket.create_connection(("127.0.0.1", port), timeout=5)
        slow.sendall(b"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 40\r\n\r\n{")
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        stdout, _ = proc.communicate(timeout=40)
        stopped_in = time.monotonic() - started
        slow.close()
    finally:
        for sock in crowd:
            sock.close()
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    text = log.read_text()
    assert log.stat().st_size < 4000 and "Traceback" not in text, text[:2000]
    assert proc.returncode == 0 and stopped_in < 15
    assert "1 cut off after the 3 s grace period" in stdout and "answered" not in stdout, stdout


@pytest.mark.slow
def test_a_stop_with_nothing_in_flight_says_so(sample_index: Path, model_cache: Path) -> None:
    """Item 14: the stop line says what happened, not a fixed sentence."""
    from tests.serve.conftest import Server

    server = Server(sample_index, model_cache, "--idle-unload", "0")
    try:
        server.wait_ready()
        assert http(server.url + "/health")[0] == 200
    finally:
        code, _ = server.stop()
    assert code == 0
    assert "no request was in flight" in server.stdout and "were answered" not in server.stdout
