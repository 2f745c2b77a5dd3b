"""The address record a running server leaves in its index folder, so that
``ragged search`` finds it; a record whose process is gone is ignored.

Anyone who can write to the index folder can plant a record, so a record
is trusted only when it names a loopback address whose port is listened
on by the recorded process, and that process belongs to this user
(:func:`untrusted`); ``ragged search`` sends the token to nothing else.
"""

from __future__ import annotations

import ipaddress
import json
import os
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

from loguru import logger

from ragged.errors import IndexStoreError
from ragged.index.files import atomic_write

RECORD = "serve.json"


@dataclass(frozen=True)
class ServerRecord:
    """Where the server of an index listens."""

    pid: int
    url: str
    token_required: bool
    started: float

    @property
    def alive(self) -> bool:
        """True while the recorded process exists."""
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # another user's process: it exists
            return True
        return True


def write_record(index_dir: Path, url: str, token_required: bool) -> bool:
    """Record this process as the index's server; False if the folder is read-only."""
    record = ServerRecord(os.getpid(), url, token_required, time.time())
    data = json.dumps(asdict(record)).encode()
    try:
        atomic_write(index_dir / RECORD, lambda fh: fh.write(data))
    except IndexStoreError:
        return False
    return True


def read_record(index_dir: Path) -> ServerRecord | None:
    """The index's live server, or None (no record, a damaged one, or a dead process)."""
    try:
        raw = json.loads((index_dir / RECORD).read_text())
        record = ServerRecord(int(raw["pid"]), str(raw["url"]), bool(raw["token_required"]),
                              float(raw["started"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return record if record.alive else None


def _loopback(name: str | None) -> bool:
    if name == "localhost":
        return True
    try:
        return name is not None and ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def untrusted(record: ServerRecord) -> str | None:
    """Why a client must not talk to the server ``record`` names (None: it may):
    its URL must be ``http://`` on a loopback address, and the recorded
    process must be this user's and listen on that port."""
    import psutil

    try:
        parts = urllib.parse.urlsplit(record.url)
        port = parts.port
    except ValueError:
        return f"its address {record.url!r} is not a URL"
    if parts.scheme != "http" or port is None or not _loopback(parts.hostname):
        return f"its address {record.url!r} is not http:// on this machine's loopback"
    try:
        process = psutil.Process(record.pid)
        if hasattr(os, "getuid") and process.uids().real != os.getuid():
            return f"its process {record.pid} belongs to another user"
        connections = getattr(process, "net_connections", None) or process.connections
        listening = any(c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
                        for c in connections(kind="inet"))
    except psutil.NoSuchProcess:
        return f"its process {record.pid} is gone"
    except (psutil.Error, OSError) as exc:
        return f"its process {record.pid} cannot be checked ({type(exc).__name__})"
    return None if listening else f"its process {record.pid} does not listen on port {port}"


def trusted_url(index_dir: Path) -> str | None:
    """The URL of the index's recorded server when the record can be trusted
    (see :func:`untrusted`); a record naming another machine is reported, a
    stale one not."""
    record = read_record(index_dir)
    if record is None:
        return None
    why = untrusted(record)
    if why is None:
        return record.url
    planted = "loopback" in why  # no ragged server writes that; a stale record is not worth a line
    (logger.warning if planted else logger.debug)("Ignoring {}: {}; searching in this process.",
                                                  index_dir / RECORD, why)
    return None


def remove_record(index_dir: Path) -> None:
    """Remove this process's record (another server's is left alone)."""
    path = index_dir / RECORD
    try:
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
