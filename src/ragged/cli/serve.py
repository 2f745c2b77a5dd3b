"""``ragged serve``: the resident search service."""

from __future__ import annotations

import asyncio
import ipaddress
import threading
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import click

from ragged.cli.options import device_option, index_option, memory_target_option, policy
from ragged.cli.output import fail, out, safe


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _record_url(host: str, port: int) -> str:
    """The address ``ragged search`` is told: loopback for a wildcard address
    (clients trust only a loopback server; see ragged.serve.record)."""
    if host in ("0.0.0.0", ""):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}"


def run_server(index_dir: Path, host: str, port: int, idle_unload: float, device: str, token: str | None,
               memory_target: float, cache_dir: Path, allowed_hosts: Sequence[str] = (),
               max_connections: int = 1000, grace_period: int = 30) -> None:
    """Serve ``index_dir`` until SIGTERM or Ctrl-C."""
    import logging

    import uvicorn

    from ragged.serve.app import create_app
    from ragged.serve.connections import ConnectionLimits, QuietLog, RequestTally, server_options
    from ragged.serve.record import remove_record, write_record
    from ragged.serve.security import HostPolicy
    from ragged.serve.service import SearchService, ServiceConfig

    service = SearchService(ServiceConfig(index_dir=index_dir, device=device, cache_dir=cache_dir,
                                          idle_unload_s=idle_unload or None,
                                          policy=policy(memory_target)))

    def start() -> None:
        service.start()
        out.print(f"ragged: {safe(service.summary())}", soft_wrap=True)  # the form chosen, and why

    starter = threading.Thread(target=start, name="ragged-start", daemon=True)

    @asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        starter.start()  # /health answers at once; /ready once the model and index are in
        try:
            yield
        finally:
            await asyncio.to_thread(service.close)
            remove_record(index_dir)

    app = create_app(service, token=token, hosts=HostPolicy.for_server(host, allowed_hosts))
    app.router.lifespan_context = lifespan
    tally = RequestTally(app)
    quiet = QuietLog()

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._captured_signals.clear()  # a graceful stop exits 0; uvicorn would re-raise the signal

        async def startup(self, sockets: Any = None) -> None:
            asyncio.get_running_loop().set_exception_handler(quiet.asyncio_handler)  # no traceback storms
            await super().startup(sockets)
            if self.servers:
                bound = self.servers[0].sockets[0].getsockname()
                url = f"http://{host if ':' not in host else f'[{host}]'}:{bound[1]}"
                recorded = write_record(index_dir, _record_url(host, bound[1]), token_required=bool(token))
                note = "" if recorded else " (the index folder is read-only: 'ragged search' will not find it)"
                out.print(f"ragged: serving {safe(index_dir)} on {url}{note}; Ctrl-C to stop", soft_wrap=True)

        async def shutdown(self, sockets: Any = None) -> None:
            tally.stopping()
            await super().shutdown(sockets)

    limits = ConnectionLimits(max_connections=max_connections)
    config = uvicorn.Config(tally, host=host, port=port, log_level="warning", timeout_graceful_shutdown=grace_period,
                            lifespan="on", access_log=False, **server_options(limits, quiet))
    logging.getLogger("uvicorn.error").addFilter(quiet.logging_filter())
    Server(config).run()
    out.print(f"ragged: stopped ({tally.summary(grace_period)}); the models were released.")


@click.command(short_help="Serve the index: web page, JSON API, metrics.")
@index_option
@click.option("--host", default="127.0.0.1", help="Address to listen on; anything but loopback needs --token.")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, help="Port (0: any free one).")
@click.option("--idle-unload", type=click.FloatRange(min=0), default=300.0,
              help="Seconds without a query before the model is unloaded; 0 keeps it loaded.")
@device_option
@click.option("--token", envvar="RAGGED_TOKEN", show_envvar=True, default=None,
              help="Require 'Authorization: Bearer TOKEN' on every request but /health.")
@click.option("--allowed-host", "allowed_hosts", multiple=True, envvar="RAGGED_ALLOWED_HOSTS", show_envvar=True,
              metavar="NAME", help="Also answer requests addressed to NAME (the Host a browser or proxy sends; "
                                   "repeatable; '*': any). Loopback names, IP addresses and --host always are.")
@click.option("--max-connections", type=click.IntRange(min=8), default=1000,
              help="Connections held at once (fewer where the open-file limit is lower).")
@click.option("--grace-period", type=click.IntRange(min=1), default=30,
              help="Seconds a stop (SIGTERM, Ctrl-C) waits for requests in flight before cutting them off.")
@memory_target_option
def serve(index_dir: Path, host: str, port: int, idle_unload: float, device: str, token: str | None,
          allowed_hosts: tuple[str, ...], max_connections: int, grace_period: int, memory_target: float) -> None:
    """Serve the index: a web page, a JSON API and metrics, with the model kept ready."""
    from ragged.gpu import default_device_manager
    from ragged.index.store import IndexStore
    from ragged.paths import cache_dir

    if not _loopback(host) and not token:
        fail(f"Listening on {host} would expose your documents to the network: give --token "
             "(or RAGGED_TOKEN), or keep the default --host 127.0.0.1.", code=2)
    index_dir = index_dir.resolve()  # recorded and reported absolute: clients anywhere find it
    IndexStore.open(index_dir)  # no index there (or a file): one line saying what to do
    from ragged.serve.client import find_server

    running = find_server(index_dir)  # a live server of this index, asked over HTTP: a stale record is ignored
    if running is not None:
        fail(f"{safe(index_dir)} is already served at {running}: use that server, or stop it first "
             "(one server per index).")
    if port and (problem := _port_problem(host, port)):
        fail(problem)
    default_device_manager().get_optimal_device(device)
    run_server(index_dir, host, port, idle_unload, device, token, memory_target, cache_dir(), allowed_hosts,
               max_connections, grace_period)


def _port_problem(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be listened on (in use, not an address here), or None."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will: TIME_WAIT is fine
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"Port {port} is in use: stop the other server or pick another --port (0 picks a free one)."
            return f"Cannot listen on {host}:{port} ({exc.strerror or exc}); check --host and --port."
    return None
