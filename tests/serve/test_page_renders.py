"""Page renders under load and after a sly edit (issue 18, items 15 and 20).

The renderer needs only a catalog and the files, so these tests write
their catalogs by hand (no model, no ingest)."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

import ragged.serve.pages as pages
from ragged.index.catalog import Catalog, PageRecord
from ragged.ingest.documents import file_sha256
from ragged.serve.pages import MAX_RENDERS, PageRenderer, PageUnavailable
from tests.inputs import EXAMPLES


class Counting:
    """Wraps a function: how often it ran, and how many ran at once at most."""

    def __init__(self, fn: Callable[..., Any], pause: float = 0.0) -> None:
        self.fn, self.pause = fn, pause
        self.calls = self.running = self.most = 0
        self.lock = threading.Lock()

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        with self.lock:
            self.calls += 1
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            time.sleep(self.pause)  # long enough for every thread to arrive while it runs
            return self.fn(*args, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


def catalog_of(*pages_of: tuple[Path, int]) -> Catalog:
    """A catalog of the given (file, pages), as ingest would record them."""
    records = [PageRecord(file_sha256(path), str(path), page, 1) for path, count in pages_of
               for page in range(1, count + 1)]
    return Catalog(records, list(dict.fromkeys(r.doc_hash for r in records)))


def test_forty_requests_for_one_uncached_page_decode_it_once(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 15: forty simultaneous requests for the same uncached big page
    wait for one render (it was one decode each: 406 MB -> 3.67 GB)."""
    renders = Counting(pages.render, pause=0.3)
    monkeypatch.setattr(pages, "render", renders)
    image = tmp_path / "poster.png"
    Image.new("RGB", (3000, 3000), (200, 180, 40)).save(image)
    catalog = catalog_of((image, 1))
    record = catalog.pages[0]
    renderer = PageRenderer(tmp_path)  # nothing rendered yet
    barrier = threading.Barrier(40)

    def ask(_: int) -> bytes:
        barrier.wait(30)
        return renderer.png(catalog, record.doc_hash, record.page, 2000)

    with ThreadPoolExecutor(40) as pool:
        answers = list(pool.map(ask, range(40)))
    assert renders.calls == 1
    assert len(set(answers)) == 1 and answers[0].startswith(b"\x89PNG")


def test_renders_of_different_pages_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 15: memory is bounded: at most MAX_RENDERS pages decoded at once,
    and a failed render fails its waiters without wedging the next request."""
    renders = Counting(pages.render, pause=0.2)
    monkeypatch.setattr(pages, "render", renders)
    catalog = catalog_of(*((pdf, 1) for pdf in sorted(EXAMPLES.glob("*.pdf"))))
    renderer = PageRenderer(tmp_path)
    asks = [(r.doc_hash, r.page, w) for r in catalog.pages for w in (160, 320)]
    with ThreadPoolExecutor(len(asks)) as pool:
        list(pool.map(lambda a: renderer.png(catalog, *a), asks))
    assert renders.calls == len(asks) and renders.most <= MAX_RENDERS

    def broken(*args: Any) -> Any:
        raise OSError("disk on fire")

    monkeypatch.setattr(pages, "render", Counting(broken, pause=0.2))
    record = catalog.pages[0]
    with ThreadPoolExecutor(5) as pool:
        futures = [pool.submit(renderer.png, catalog, record.doc_hash, record.page, 640) for _ in range(5)]
    assert all(isinstance(f.exception(), OSError) for f in futures)
    monkeypatch.setattr(pages, "render", renders)
    assert renderer.png(catalog, record.doc_hash, record.page, 640).startswith(b"\x89PNG")


def test_a_file_edited_without_a_size_or_time_change_is_not_served(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Item 20: the same size and modification time put back, as an editor
    or `touch -d` can: the cached hash must not vouch for the new content.
    An unchanged file is not hashed again on the next request (cheap)."""
    docs = tmp_path / "docs"
    docs.mkdir()
    pdf = docs / "report.pdf"
    shutil.copy(EXAMPLES / "annual-report.pdf", pdf)
    catalog = catalog_of((pdf, 1))
    record = catalog.pages[0]
    time.sleep(pages.RACY_S + 0.1)  # out of the window where a later write could share the time stamps
    renderer = PageRenderer(tmp_path)
    assert renderer.png(catalog, record.doc_hash, record.page, 160).startswith(b"\x89PNG")
    hashes = Counting(file_sha256)
    monkeypatch.setattr("ragged.serve.pages.file_sha256", hashes)
    assert renderer.png(catalog, record.doc_hash, record.page, 160).startswith(b"\x89PNG")
    assert hashes.calls == 0  # unchanged: its stamp vouches for it

    before = os.stat(pdf)
    data = bytearray(pdf.read_bytes())
    at = data.rindex(b"%%EOF")
    data[at - 2: at] = b"%x"  # same length, other content
    pdf.write_bytes(bytes(data))
    os.utime(pdf, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = os.stat(pdf)
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    for width in (160, 640):  # the render cached before, and one never rendered
        with pytest.raises(PageUnavailable, match="changed since it was ingested") as refused:
            renderer.png(catalog, record.doc_hash, record.page, width)
        assert refused.value.status == 410
