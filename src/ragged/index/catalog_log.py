"""The catalog log: the index's commit point (format 3), append-only.

``catalog/`` holds generations, each a snapshot and the records appended
after it::

    catalog/base-00000007.json    the state at the start of generation 7
    catalog/log-00000007.jsonl    one line per commit since: "<crc32> <json>"

A commit is one line appended and synced: it costs the change, not the
index. A document is in the index once its line is whole on disk; a line
cut short by a crash (the last one) is ignored by readers and cut off by
the next writer. When the log has grown past its snapshot, the writer
writes the next generation's snapshot (atomically) and starts a new log;
a reader that lists the folder just before may find the older generation
gone, and reads again. Nothing here imports LanceDB: a search reads the
catalog in milliseconds.
"""

from __future__ import annotations

import json
import os
import zlib
from contextlib import suppress
from pathlib import Path
from typing import Any

from ragged.errors import IndexStoreError
from ragged.index.catalog_state import CatalogState
from ragged.index.files import UMASK, atomic_write, ensure_folder, refuse_link, storage_error, sync_folder

CATALOG_DIR = "catalog"
COMPACT_MIN_BYTES = 256 * 1024  # the log is folded into a new snapshot past this and past the snapshot's size
KEEP_GENERATIONS = 2  # older generations a reader that listed the folder a moment ago may still be opening
_RETRIES = 5


class CatalogDamaged(IndexStoreError):
    """The catalog cannot be read (a snapshot or a line in the middle of the log is bad)."""


def encode(record: dict[str, Any]) -> bytes:
    body = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x " % zlib.crc32(body) + body + b"\n"


def decode(line: bytes) -> dict[str, Any] | None:
    """A whole, intact line's record; None if it is cut short or does not match its checksum."""
    if len(line) < 10 or not line.endswith(b"\n") or line[8:9] != b" ":
        return None
    body = line[9:-1]
    try:
        if int(line[:8], 16) != zlib.crc32(body):
            return None
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _name(kind: str, generation: int) -> str:
    return f"{kind}-{generation:08d}.{'json' if kind == 'base' else 'jsonl'}"


def generations(folder: Path) -> list[int]:
    """The generations whose snapshot is there, oldest first."""
    try:
        names = [p.name for p in folder.iterdir()]
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise storage_error(exc, folder) from exc
    found = []
    for name in names:
        if name.startswith("base-") and name.endswith(".json") and name[5:13].isdigit() and len(name) == 18:
            found.append(int(name[5:13]))
    return sorted(found)


def stamp(folder: Path) -> tuple[int, int] | None:
    """(newest generation, bytes of its log): changes with every commit; cheap (a listing and a stat)."""
    gens = generations(folder)
    if not gens:
        return None
    try:
        size = (folder / _name("log", gens[-1])).stat().st_size
    except FileNotFoundError:
        size = 0
    return gens[-1], size


class CatalogReader:
    """The catalog as of the last :meth:`update`; later updates read only what was appended."""

    def __init__(self, folder: Path) -> None:
        self.folder = refuse_link(folder)
        self.state: CatalogState | None = None
        self.generation = 0
        self.offset = 0  # bytes of the log applied

    def update(self) -> bool:
        """Read what was committed since; True when anything changed."""
        for _ in range(_RETRIES):
            gens = generations(self.folder)
            if not gens:
                if self.state is None:
                    return False
                raise CatalogDamaged(f"{self.folder} has no snapshot left")
            try:
                if self.state is None or gens[-1] != self.generation:
                    self._load(gens[-1])
                    return True
                return self._tail()
            except FileNotFoundError:
                continue  # a compaction removed what the listing showed: list again
        raise CatalogDamaged(f"{self.folder} kept changing while it was read")

    def _load(self, generation: int) -> None:
        path = self.folder / _name("base", generation)
        data = path.read_bytes()
        record = decode(data)
        if record is None:
            raise CatalogDamaged(f"{path} is damaged (its checksum does not match)")
        try:
            state = CatalogState.from_json(record)
        except (KeyError, TypeError, ValueError) as exc:
            raise CatalogDamaged(f"{path} is damaged ({exc})") from exc
        self.state, self.generation, self.offset = state, generation, 0
        self._tail()

    def _tail(self) -> bool:
        assert self.state is not None
        path = self.folder / _name("log", self.generation)
        try:
            with path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read()
        except FileNotFoundError:
            if self.offset:
                raise
            return False  # an empty generation: its log is made by the first commit
        lines = data.splitlines(keepends=True)
        changed = False
        for n, line in enumerate(lines):
            record = decode(line)
            if record is None:
                if n == len(lines) - 1:
                    break  # the last line, cut short by a crash or being written now: not committed
                raise CatalogDamaged(f"{path} is damaged at byte {self.offset} (a record in the middle of the log "
                                     "does not match its checksum)")
            try:
                self.state.apply(record)
            except (KeyError, TypeError, ValueError) as exc:
                raise CatalogDamaged(f"{path} is damaged at byte {self.offset} ({exc})") from exc
            self.offset += len(line)
            changed = True
        return changed

    @property
    def stamp(self) -> tuple[int, int]:
        return self.generation, self.offset


class CatalogLog:
    """The single writer's side: appends records, folds the log into snapshots."""

    def __init__(self, folder: Path, state: CatalogState, generation: int, offset: int) -> None:
        self.folder, self.state, self.generation = folder, state, generation
        self.log_bytes = offset
        self.base_bytes = 0
        self._fd: int | None = None

    @classmethod
    def create(cls, folder: Path, state: CatalogState) -> CatalogLog:
        """A new catalog (generation after any there) holding ``state``."""
        ensure_folder(refuse_link(folder))
        gens = generations(folder)
        log = cls(folder, state, (gens[-1] if gens else 0), 0)
        log.compact()
        return log

    @classmethod
    def resume(cls, reader: CatalogReader) -> CatalogLog:
        """Continue the catalog ``reader`` read whole (its torn tail, if any, is cut off)."""
        assert reader.state is not None
        log = cls(reader.folder, reader.state, reader.generation, reader.offset)
        path = reader.folder / _name("log", reader.generation)
        if path.exists():
            try:
                os.truncate(path, reader.offset)
            except OSError as exc:
                raise storage_error(exc, path) from exc
        log.base_bytes = (reader.folder / _name("base", reader.generation)).stat().st_size
        return log

    def _open(self) -> int:
        if self._fd is None:
            path = refuse_link(self.folder / _name("log", self.generation))
            created = not path.exists()
            try:
                self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~UMASK)
                if created:
                    os.fchmod(self._fd, 0o666 & ~UMASK)
            except OSError as exc:
                raise storage_error(exc, path) from exc
            if created:
                sync_folder(self.folder)
        return self._fd

    def append(self, record: dict[str, Any]) -> None:
        """Commit ``record``: applied to the state, appended and synced."""
        line = encode(record)
        fd = self._open()
        try:
            os.write(fd, line)
            os.fdatasync(fd)
        except OSError as exc:
            with suppress(OSError):
                os.ftruncate(fd, self.log_bytes)  # no half line left for the next append to follow
            raise storage_error(exc, self.folder / _name("log", self.generation)) from exc
        self.state.apply(record)
        self.log_bytes += len(line)
        if self.log_bytes > max(COMPACT_MIN_BYTES, self.base_bytes):
            self.compact()

    def compact(self) -> None:
        """Write the state as the next generation's snapshot; drop generations readers no longer need."""
        self.close()
        data = encode(self.state.to_json())
        next_generation = self.generation + 1
        atomic_write(self.folder / _name("base", next_generation), lambda fh: fh.write(data))
        self.generation, self.log_bytes, self.base_bytes = next_generation, 0, len(data)
        for old in generations(self.folder)[:-1 - KEEP_GENERATIONS]:
            for kind in ("base", "log"):
                (self.folder / _name(kind, old)).unlink(missing_ok=True)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
