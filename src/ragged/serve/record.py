"""The address record a running server leaves in its index folder, so that
``ragged search`` finds it; a record whose process is gone is ignored."""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

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


def remove_record(index_dir: Path) -> None:
    """Remove this process's record (another server's is left alone)."""
    path = index_dir / RECORD
    try:
        if int(json.loads(path.read_text())["pid"]) == os.getpid():
            path.unlink()
    except (OSError, ValueError, KeyError, TypeError):
        pass
