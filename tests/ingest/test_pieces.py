"""A long document is committed in bounded pieces, and shown only whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ragged.index.store import IndexStore, StoredPage
from ragged.ingest import commit as commit_module
from ragged.ingest.commit import Committer
from ragged.ingest.documents import Document, DocumentKind
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.report import IngestReport
from ragged.ingest.text_side import TextSide

DIM = 16
PAGES = 40
PAGE_BYTES = 50 * DIM * 2  # 50 fp16 vectors a page


def page(n: int) -> StoredPage:
    return StoredPage(np.random.default_rng(n).standard_normal((50, DIM)).astype(np.float16))


def test_pages_are_let_go_piece_by_piece(tmp_path: Path) -> None:
    index = tmp_path / "index"
    store = IndexStore.open_for_writing(index, "org/model")
    report = IngestReport(index=str(index), model="org/model")
    committer = Committer(store, report, lambda n: None, set(), TextSide(None), piece_bytes=6 * PAGE_BYTES)
    doc = Document(tmp_path / "long.pdf", "a" * 64, DocumentKind.PDF, PAGES)
    entry = committer.open(doc)
    held = []
    for n in range(PAGES):
        committer.page(entry, n, page(n))
        held.append(sum(p is not None for p in entry.pages))
        if n < PAGES - 1:
            assert committer.commit_ready() == 0
            assert IndexStore.read_meta(index) is None or IndexStore.open(index).catalog().pages == []  # never half
    assert max(held) <= 6  # what one document holds is bounded by the piece size
    assert committer.commit_ready() == 1 and report.pages_added == PAGES
    store.close()
    catalog = IndexStore.open(index).catalog()
    assert [p.page for p in catalog.pages] == list(range(1, PAGES + 1))
    assert len(catalog.extents["a" * 64]) == 7  # six pieces of six pages, then the last four with the commit
    reader = IndexStore.open(index)
    for n in (0, 17, PAGES - 1):
        np.testing.assert_array_equal(reader.page_vectors("a" * 64, n + 1), page(n).vectors)


def test_a_document_failing_after_pieces_leaves_nothing(tmp_path: Path) -> None:
    index = tmp_path / "index"
    store = IndexStore.open_for_writing(index, "org/model")
    report = IngestReport(index=str(index), model="org/model")
    committer = Committer(store, report, lambda n: None, set(), TextSide(None), piece_bytes=4 * PAGE_BYTES)
    entry = committer.open(Document(tmp_path / "long.pdf", "b" * 64, DocumentKind.PDF, 20))
    for n in range(10):
        committer.page(entry, n, page(n))
    committer.fail(entry, "page 11 could not be embedded")
    committer.commit_ready()
    assert IndexStore.open(index).catalog().pages == [] and store.pages.doc_hashes() == set()
    store.close()


@pytest.mark.slow
def test_a_long_pdf_is_ingested_in_pieces(tmp_path: Path, model_cache: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    pdf = tmp_path / "long.pdf"
    blank = [Image.new("RGB", (120, 160), "white") for _ in range(PAGES)]
    blank[0].save(pdf, save_all=True, append_images=blank[1:])
    monkeypatch.setattr(commit_module, "PIECE_BYTES", 8 * 1030 * 128 * 2)  # 8 tiny-colpali pages a piece
    report = ingest([pdf], IngestOptions(index_dir=tmp_path / "index", model="tiny-colpali", dpi=36,
                                         cache_dir=model_cache, text_model="none"))
    assert report.pages_added == PAGES and not report.problems
    catalog = IndexStore.open(tmp_path / "index").catalog()
    assert len(catalog.pages) == PAGES and len(next(iter(catalog.extents.values()))) > 2
