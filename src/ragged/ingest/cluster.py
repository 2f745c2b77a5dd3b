"""Joining a Ray cluster, or starting a local one, for ``--workers``.

An address is checked before any work: ``auto`` or the head node's
``HOST:PORT`` (a Ray Client ``ray://`` address is refused: the driver
reads the documents and writes the index, so it runs on a node), and the
head's port is tried for a few seconds. Ray itself would retry an address
where nothing answers for a minute or more, printing a line a second from
its C++ client and ending in chained tracebacks; here each failure is one
line, and Ray's own attempts to join are held to a few seconds with their
lines kept back (shown only if the join succeeds).
"""

from __future__ import annotations

import os
import re
import socket
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ragged.errors import ConfigurationError
from ragged.ingest.ray_output import quiet_ray


def require_ray() -> Any:
    """The ``ray`` module, or a clear error saying how to get it."""
    try:
        import ray
    except ImportError:
        raise ConfigurationError("--workers runs on Ray, which is not installed: pip install 'ragged[ray]'.") from None
    return ray


_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)$")
PROBE_S = 3.0  # how long the head node's port is tried before Ray is asked to join
JOIN_WAIT_VAR, JOIN_WAIT_S = "RAY_gcs_server_port_wait_time_s", 5  # Ray's own join attempts (about 1 s each)


def check_address(address: str) -> str:
    """``address`` if it is ``auto`` or the head node's ``HOST:PORT``, else a
    clear error (checked before any work)."""
    if address.startswith("ray://"):
        raise ConfigurationError(
            "ragged's driver reads the documents and writes the index, so it must run on a node of the cluster: "
            "run 'ray start --address=HEAD:6379' on this machine, then use --ray-address auto."
        )
    host, colon, port = address.rpartition(":")
    if address == "auto" or (colon and _HOST.match(host) and port.isdigit() and 0 < int(port) < 65536):
        return address
    raise ConfigurationError(f"--ray-address {address!r} is not an address: give the head node's HOST:PORT (as "
                             "'ray start --head' prints it), or auto for the cluster this machine belongs to.")


def _head_address(address: str) -> str:
    """The HOST:PORT Ray will connect to for ``address`` (``auto`` looked up
    as Ray looks it up), or a clear error when there is none."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:  # another Ray: its own lookup, unprobed
        return address
    try:
        return canonicalize_bootstrap_address(address) or address
    except (ConnectionError, ValueError) as exc:
        raise ConfigurationError(f"No Ray cluster found for --ray-address {address} ({str(exc).split('.')[0]}): "
                                 "start one with 'ray start --head', or leave out --ray-address.") from None


def _probe(address: str) -> None:
    """A clear error, within :data:`PROBE_S`, when nothing listens at ``address``
    (Ray itself would retry for minutes, printing its own log lines)."""
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_S).close()
    except (OSError, ValueError) as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else getattr(exc, "strerror", None) or str(exc)
        raise ConfigurationError(f"Cannot reach the Ray cluster at {address} ({reason}): check --ray-address and "
                                 "that 'ray start --head' runs there, or leave out --ray-address.") from None


def check_reachable(address: str) -> None:
    """A clear error, within seconds, when ``address`` is malformed or no
    Ray cluster listens there (before any work, and before Ray's own retries)."""
    check_address(address)
    _probe(_head_address(address))


@contextmanager
def _native_stderr_held() -> Iterator[list[bytes]]:
    """File descriptor 2 diverted while Ray joins a cluster: its C++ client
    prints a line a second while it retries. The lines are handed back in
    the yielded list for the caller to show (on success) or drop (on a
    failure, which is reported in one line instead)."""
    sys.stderr.flush()
    saved = os.dup(2)
    held: list[bytes] = []
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield held
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            held.append(sink.read())


def connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` or start a local one; True if this call started it."""
    if address:
        check_address(address)
    quiet_ray(ray)  # its raylet's "worker died" lines: ragged reports a lost worker itself
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    common = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR",
              "configure_logging": False}
    with warnings.catch_warnings():
        # Ray starts its processes with fork + exec: nothing of LanceDB's runtime survives the exec, so
        # LanceDB's warning about forking after it was loaded (an index already opened) does not apply.
        warnings.filterwarnings("ignore", message="lancedb fork support", category=RuntimeWarning)
        if address:
            head = _head_address(address)
            _probe(head)
            wait = os.environ.get(JOIN_WAIT_VAR)
            os.environ[JOIN_WAIT_VAR] = wait or str(JOIN_WAIT_S)
            try:
                with _native_stderr_held() as held:
                    ray.init(address=address, **common)
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigurationError(f"Could not join the Ray cluster at {head} ({first}): is it a Ray head "
                                         "node's address? Check --ray-address.") from None
            finally:
                if wait is None:
                    os.environ.pop(JOIN_WAIT_VAR, None)
            if held and held[0]:
                os.write(2, held[0])  # joined: whatever Ray printed on the way is shown after all
        else:
            ray.init(**common)
    return True
