"""Page images for the web page: rendered from the ingested file, once.

Only documents in the catalog can be served: the request names a document
id and a page number, the catalog gives the file, and the file must still
hold the content that was ingested (its hash is checked), so no path from
a request ever reaches the file system. Renders are cached under the index
(``.cache/pages``) at a few fixed widths.

A file's hash is computed again whenever its size, modification time,
change time (``st_ctime``: set by the system on every write, and even when
a program puts the modification time back) or inode differ from when it
was hashed, and always while the file was changed in the last seconds
before hashing (a write within the clock's resolution would not show).
Renders are single-flight and bounded: requests for the same page at the
same width wait for one render, and at most :data:`MAX_RENDERS` pages are
decoded at once, so forty requests for one huge image decode it once.
"""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from PIL import Image

from ragged.errors import PageUnavailable, RaggedError
from ragged.index.catalog import Catalog, PageRecord
from ragged.index.files import atomic_write, check_doc_id
from ragged.ingest.conversion import page_file
from ragged.ingest.documents import DocumentKind, file_sha256, inspect_kind, render_pdf_page

WIDTHS = (160, 320, 640, 1280, 2000)  # renders are cached at these widths only
MAX_RENDERS = 2  # pages decoded at once (a page image may be ~200 MB decoded)
RACY_S = 2.0  # a file changed this recently when hashed is hashed again next time
T = TypeVar("T")


def bucket(width: int) -> int:
    """The cached width that serves a request for ``width`` pixels."""
    return next((w for w in WIDTHS if w >= width), WIDTHS[-1])


@dataclass(frozen=True)
class _Hash:
    stamp: tuple[int, ...]  # what the file looked like when hashed (see _stamp)
    sha256: str


def _stamp(stat: os.stat_result) -> tuple[int, ...]:
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


class SingleFlight(Generic[T]):
    """Runs ``fn`` once per key at a time: callers asking for a key already
    being worked on wait for that result (or its error) instead."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, Future[T]] = {}

    def run(self, key: Hashable, fn: Callable[[], T]) -> T:
        with self._lock:
            future = self._running.get(key)
            leader = future is None
            if future is None:
                future = self._running[key] = Future()
        if not leader:
            return future.result()
        try:
            result = fn()
        except BaseException as exc:
            future.set_exception(exc)
            raise
        else:
            future.set_result(result)
            return result
        finally:
            with self._lock:
                del self._running[key]


class PageRenderer:
    """Renders and caches page images of one index."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self.cache_dir = index_dir / ".cache" / "pages"
        self._hashes: dict[str, _Hash] = {}
        self._hashing: SingleFlight[str] = SingleFlight()
        self._rendering: SingleFlight[bytes] = SingleFlight()
        self._decoders = threading.BoundedSemaphore(MAX_RENDERS)

    def record(self, catalog: Catalog, doc_hash: str, page: int) -> PageRecord:
        """The catalog's page, or :class:`PageUnavailable` (404)."""
        try:
            check_doc_id(doc_hash)
        except RaggedError:
            raise PageUnavailable("Not a document id.", 404) from None
        for record in catalog.pages:
            if record.doc_hash == doc_hash and record.page == page:
                return record
        raise PageUnavailable(f"The index has no page {page} of document {doc_hash[:12]}.", 404)

    def _current_hash(self, path: Path) -> str:
        stamp = _stamp(path.stat())
        cached = self._hashes.get(str(path))
        if cached is not None and cached.stamp == stamp:
            return cached.sha256
        return self._hashing.run(str(path), lambda: self._hash(path))

    def _hash(self, path: Path) -> str:
        before = path.stat()
        sha256 = file_sha256(path)
        changed_ns = max(before.st_mtime_ns, before.st_ctime_ns)
        if _stamp(path.stat()) == _stamp(before) and time.time_ns() - changed_ns > RACY_S * 1e9:
            self._hashes[str(path)] = _Hash(_stamp(before), sha256)
        else:  # changed while read, or too recently to tell a later write apart: not kept
            self._hashes.pop(str(path), None)
        return sha256

    def png(self, catalog: Catalog, doc_hash: str, page: int, width: int) -> bytes:
        """The page as PNG at the cached width at or above ``width``."""
        record = self.record(catalog, doc_hash, page)
        size = bucket(width)
        path = Path(record.path)  # checked even for a cached render: a file gone or changed is not served
        if not path.is_file():
            raise PageUnavailable(f"{path.name} is no longer where it was ingested from.", 410)
        if self._current_hash(path) != doc_hash:  # hashed again only when its size or time changed
            raise PageUnavailable(f"{path.name} changed since it was ingested; run 'ragged ingest' again.", 410)
        cached = self.cache_dir / doc_hash / f"{page}-{size}.png"
        if cached.is_file() and not cached.is_symlink():
            return cached.read_bytes()
        return self._rendering.run((doc_hash, page, size), lambda: self._render(path, doc_hash, page, size, cached))

    def _render(self, path: Path, doc_hash: str, page: int, size: int, cached: Path) -> bytes:
        with self._decoders:
            data = _encode(render(page_file(self.index_dir, path, doc_hash), page, size))  # a converted one's PDF
        if os.access(self.cache_dir.parent.parent, os.W_OK):
            with suppress(RaggedError):  # serving works without the cache
                atomic_write(cached, lambda fh: fh.write(data))
        return data


def render(path: Path, page: int, width: int) -> Image.Image:
    """Page ``page`` (1-based) of a PDF or image file, ``width`` pixels wide."""
    if inspect_kind(path) is DocumentKind.PDF:
        return render_pdf_page(path, page, width)
    with Image.open(path) as img:
        img.seek(page - 1)
        frame = img.convert("RGB")
    height = max(1, round(frame.height * width / frame.width))
    resized: Image.Image = frame.resize((width, height), Image.Resampling.LANCZOS)
    return resized


def _encode(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", optimize=False)
    return out.getvalue()
