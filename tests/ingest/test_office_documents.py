"""Office, web and text documents through LibreOffice, end to end: a mixed
folder ingested once, each file's phrase found on its page by keyword and
by text search, the page image the web page shows, changes and moves, and
no network."""

from __future__ import annotations

import http.server
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from PIL import Image, ImageChops

from ragged.gpu.runtime import Runtime
from ragged.index.store import IndexStore
from ragged.ingest.conversion import cached_pdf, convert_documents
from ragged.ingest.documents import inspect, render_pdf_page
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.report import IngestReport
from ragged.integrations.backend import IndexClient
from ragged.serve.pages import PageRenderer
from tests.office_inputs import PHRASES, make_office_folder, needs_soffice, write_txt

pytestmark = [needs_soffice, pytest.mark.slow]


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, IngestReport]:
    root = tmp_path_factory.mktemp("office")
    make_office_folder(root / "docs")
    report = ingest([root / "docs"], IngestOptions(index_dir=root / "index", model="tiny-colpali", dpi=72,
                                                   cache_dir=model_cache))
    return root / "index", report


@pytest.fixture(scope="module")
def searcher(office: tuple[Path, IngestReport], model_cache: Path) -> Iterator[IndexClient]:
    with IndexClient(office[0], local=True, cache_dir=model_cache) as opened:  # in this process
        yield opened


def test_every_file_is_converted_or_named(office: tuple[Path, IngestReport]) -> None:
    index, report = office
    stored = {Path(d.path).name: d.pages for d in IndexStore.open(index).documents()}
    assert stored == dict.fromkeys(PHRASES, 2)  # the original files are what is stored
    assert report.documents_converted == 10 and report.pages_converted == 20
    assert [(Path(p.path).name, "\n" in p.message) for p in report.problems] == [("damaged.docx", False)]
    assert "could not open it" in report.problems[0].message
    assert [Path(p.path).name for p in report.skipped] == ["archive.xyz"]
    assert report.convert_peak_bytes > 0 and report.convert_workers >= 1


@pytest.mark.parametrize("mode", ["keyword", "text"])
def test_each_phrase_is_found_on_its_page(searcher: IndexClient, mode: str) -> None:
    for name, phrase in PHRASES.items():
        hit = searcher.search(phrase, k=1, mode=mode).hits[0]
        assert (Path(hit.path).name, hit.page) == (name, 2), (mode, phrase)
        assert phrase in " ".join(hit.text.split())  # the converted page's text, as stored


def test_the_page_image_is_the_converted_page(office: tuple[Path, IngestReport]) -> None:
    index, _ = office
    store = IndexStore.open(index)
    record = next(d for d in store.documents() if d.path.endswith("slides.pptx"))
    shown = Image.open(io.BytesIO(PageRenderer(index).png(store.catalog(), record.doc_hash, 2, 320)))
    expected = render_pdf_page(cached_pdf(index, record.doc_hash), 2, 320)
    assert shown.size == expected.size
    assert ImageChops.difference(shown.convert("RGB"), expected).getbbox() is None


def test_changed_moved_and_deleted_files(tmp_path: Path, model_cache: Path) -> None:
    folder, index = tmp_path / "docs", tmp_path / "index"
    folder.mkdir()
    write_txt(folder / "diary.txt", "first version of the diary")
    options = IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache, text_model=None)
    first = ingest([folder], options)
    assert first.documents_added == 1 and first.documents_converted == 1
    old_hash = IndexStore.open(index).documents()[0].doc_hash
    assert cached_pdf(index, old_hash).is_file()

    (folder / "diary.txt").rename(folder / "journal.txt")
    moved = ingest([folder], options)
    assert moved.documents_moved == 1 and moved.documents_converted == 0  # nothing converted or embedded again
    store = IndexStore.open(index)
    assert [Path(d.path).name for d in store.documents()] == ["journal.txt"]
    assert PageRenderer(index).png(store.catalog(), old_hash, 2, 160).startswith(b"\x89PNG")

    write_txt(folder / "journal.txt", "second version of the diary")
    changed = ingest([folder], options)
    assert changed.documents_replaced == 1 and changed.documents_converted == 1
    new_hash = IndexStore.open(index).documents()[0].doc_hash
    assert cached_pdf(index, new_hash).is_file() and not cached_pdf(index, old_hash).exists()

    (folder / "journal.txt").unlink()
    pruned = ingest([folder], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache,
                                            text_model=None, prune=True))
    assert pruned.documents_removed == 1 and not cached_pdf(index, new_hash).exists()


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        self.seen.append(self.path)
        self.send_response(404)
        self.end_headers()

    do_OPTIONS = do_HEAD = do_PROPFIND = do_GET  # LibreOffice probes with WebDAV verbs too

    def log_message(self, *args: Any) -> None:
        pass


def test_nothing_is_fetched_from_the_network(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        page = tmp_path / "linked.html"
        page.write_text(f"<html><head><link rel='stylesheet' href='{url}/style.css'></head><body><p>text</p>"
                        f"<img src='{url}/picture.png'><iframe src='{url}/frame.html'></iframe></body></html>")
        result = convert_documents([inspect(page)], tmp_path / "index", Runtime(), timeout_s=60)
    finally:
        server.shutdown()
        server.server_close()
    assert result.converted == 1 and not result.problems
    assert _Recorder.seen == []
