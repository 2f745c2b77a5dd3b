"""Files inside an index folder: atomic writes, safe names, clear errors.

Everything the index writes itself goes through :func:`atomic_write`
(temporary file, fsync, rename, fsync of the folder), so a crash leaves the
old file or the new one, never an empty one. Files follow the umask like
LanceDB's own, so an index shared by a group stays readable by it. Names
that come from the index's data (document ids) are checked before they
become paths, and links inside the index are refused.
"""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

from ragged.errors import IndexStoreError

_DOC_ID = re.compile(r"^[0-9a-f]{64}$")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


UMASK = _umask()


def check_doc_id(doc_hash: str) -> str:
    """``doc_hash`` if it is a SHA-256 in hex; anything else never becomes a path."""
    if not isinstance(doc_hash, str) or not _DOC_ID.match(doc_hash):
        raise IndexStoreError(f"Index damaged: {doc_hash!r} is not a document id; re-ingest into a new --index.")
    return doc_hash


def refuse_link(path: Path) -> Path:
    """``path`` unless it is a symbolic link (the index never makes links)."""
    if path.is_symlink():
        raise IndexStoreError(
            f"{path} is a symbolic link; ragged never makes links inside an index. Replace it with the "
            "real folder or file, or use another --index."
        )
    return path


def ensure_folder(path: Path) -> Path:
    """Create ``path`` (not a link) if missing; translate failures."""
    refuse_link(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:
        raise IndexStoreError(f"{path} is a file, not a folder; choose another --index.") from exc
    except NotADirectoryError as exc:
        raise IndexStoreError(f"{path} is not writable: part of that path is a file, not a folder; "
                              "choose another --index.") from exc
    except OSError as exc:
        raise storage_error(exc, path) from exc
    return path


def atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
    """Write ``path`` through a temporary file that is synced and renamed into
    place, so a crash never leaves it empty or half-written."""
    ensure_folder(path.parent)
    refuse_link(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
    except OSError as exc:
        raise storage_error(exc, path) from exc
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~UMASK)  # mkstemp makes 0600; follow the umask like every other file
        os.replace(tmp, path)
        sync_folder(path.parent)
    except OSError as exc:
        raise storage_error(exc, path) from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sync_folder(folder: Path) -> None:
    """Flush a folder's entries (a created or renamed file) to disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def is_disk_full(exc: BaseException) -> bool:
    """True for "no space left" from the OS or from LanceDB's Rust side."""
    text = str(exc)
    return (isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text


def storage_error(exc: BaseException, path: Path) -> IndexStoreError:
    """One clear line for a failure to read or write ``path``."""
    if is_disk_full(exc):
        return IndexStoreError(
            f"Disk full while writing {path}: free some space and run the command again "
            "(everything committed before is kept)."
        )
    if isinstance(exc, PermissionError):
        return IndexStoreError(
            f"Permission denied for {path}: ask the index's owner for access, or use another --index."
        )
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return IndexStoreError(f"{path} is on a read-only file system; use another --index.")
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).splitlines()[0][:200]
    return IndexStoreError(f"Cannot write {path} ({reason}); check the folder, or use another --index.")
