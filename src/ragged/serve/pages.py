"""Page images for the web page: rendered from the ingested file, once.

Only documents in the catalog can be served: the request names a document
id and a page number, the catalog gives the file, and the file must still
hold the content that was ingested (its hash is checked), so no path from
a request ever reaches the file system. Renders are cached under the index
(``.cache/pages``) at a few fixed widths.
"""

from __future__ import annotations

import io
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from ragged.errors import RaggedError
from ragged.index.catalog import Catalog, PageRecord
from ragged.index.files import atomic_write, check_doc_id
from ragged.ingest.conversion import page_file
from ragged.ingest.documents import DocumentKind, file_sha256, inspect_kind, render_pdf_page

WIDTHS = (160, 320, 640, 1280, 2000)  # renders are cached at these widths only


class PageUnavailable(RaggedError):
    """The page cannot be served (unknown, or its file is gone or changed)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def bucket(width: int) -> int:
    """The cached width that serves a request for ``width`` pixels."""
    return next((w for w in WIDTHS if w >= width), WIDTHS[-1])


@dataclass
class _Hash:
    size: int
    mtime_ns: int
    sha256: str


class PageRenderer:
    """Renders and caches page images of one index."""

    def __init__(self, index_dir: Path) -> None:
        self.index_dir = index_dir
        self.cache_dir = index_dir / ".cache" / "pages"
        self._hashes: dict[str, _Hash] = {}

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
        stat = path.stat()
        cached = self._hashes.get(str(path))
        if cached is None or (cached.size, cached.mtime_ns) != (stat.st_size, stat.st_mtime_ns):
            cached = _Hash(stat.st_size, stat.st_mtime_ns, file_sha256(path))
            self._hashes[str(path)] = cached
        return cached.sha256

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
