"""The ingest pipeline in process: flushes, failures, host memory, frames."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.gpu import DeviceType
from ragged.index.store import IndexStore
from ragged.ingest import pipeline
from ragged.ingest.pipeline import IngestOptions, Progress, ingest
from tests.fakes import oom_message
from tests.inputs import blank_pdf


class Counts:
    """Progress callbacks that remember what they were told."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0

    def progress(self) -> Progress:
        return Progress(start=lambda n: setattr(self, "total", n), advance=self._advance)

    def _advance(self, pages: int) -> None:
        self.done += pages


def pages_stored(index: Path) -> Counter[tuple[str, int]]:
    return Counter((Path(p.path).name, p.page) for p in IndexStore.open(index).catalog().pages)


def options(tmp_path: Path, model_cache: Path, model: str = "tiny-colpali") -> IngestOptions:
    return IngestOptions(index_dir=tmp_path / "index", model=model, dpi=72, cache_dir=model_cache)


def test_documents_spanning_flushes_are_committed_whole(tmp_path: Path, model_cache: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, count in (("a.pdf", 5), ("b.pdf", 2), ("c.pdf", 4)):
        (docs / name).write_bytes(blank_pdf(count, 300, 400, text=name))
    monkeypatch.setattr(pipeline, "BUFFER_PAGES", 3)  # every document crosses a flush
    commits: list[int] = []
    real_add = IndexStore.add_document

    def spy(self: IndexStore, doc_hash: str, path: str, pages: list[object]) -> None:
        commits.append(len(pages))
        real_add(self, doc_hash, path, pages)  # type: ignore[arg-type]

    monkeypatch.setattr(IndexStore, "add_document", spy)
    counts = Counts()
    report = ingest([docs], options(tmp_path, model_cache), counts.progress())
    assert sorted(commits) == [2, 4, 5]  # one commit per document, every page in it
    stored = pages_stored(tmp_path / "index")
    assert all(n == 1 for n in stored.values()) and len(stored) == 11
    assert counts.total == counts.done == 11
    assert report.pages_without_text == 0  # the text layer was read


def test_a_page_that_fits_nowhere_fails_its_document_only(tmp_path: Path, model_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "small.pdf").write_bytes(blank_pdf(3, 300, 400))
    (docs / "huge.pdf").write_bytes(blank_pdf(1, 2000, 2600))
    (docs / "mixed.pdf").write_bytes(blank_pdf(2, 300, 400))
    real_forward = ColPaliEmbedder._forward

    def forward(self: ColPaliEmbedder, inputs: dict[str, torch.Tensor], device: object) -> object:
        if inputs["input_ids"].shape[1] > 700:  # only the big page makes sequences this long
            raise RuntimeError(oom_message(DeviceType.CPU, 10**12))
        return real_forward(self, inputs, device)  # type: ignore[arg-type]

    monkeypatch.setattr(ColPaliEmbedder, "_forward", forward)
    counts = Counts()
    report = ingest([docs], options(tmp_path, model_cache, "tiny-colqwen2"), counts.progress())
    assert [Path(p.path).name for p in report.problems] == ["huge.pdf"]
    assert "page 1 could not be embedded: Out of memory on cpu" in report.problems[0].message
    assert {n for n, _ in pages_stored(tmp_path / "index")} == {"small.pdf", "mixed.pdf"}
    assert report.vision.failed_items == 1 and report.documents_added == 2
    assert counts.total == counts.done == 6  # each page counted once, the failed one too


def test_poster_pages_are_held_at_the_size_the_model_sees(tmp_path: Path, model_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    poster = tmp_path / "poster.pdf"
    poster.write_bytes(blank_pdf(6, 3600, 3600))  # 50 x 50 inches: 7,500 px a side at 150 dpi
    monkeypatch.setattr(pipeline, "host_buffer_bytes", lambda embedder: 5_000_000)  # about two pages
    seen: list[list[tuple[int, int]]] = []
    real = ColPaliEmbedder.embed_pages

    def spy(self: ColPaliEmbedder, images: list[Image.Image], on_batch: object = None) -> object:
        seen.append([im.size for im in images])
        return real(self, images, on_batch)  # type: ignore[arg-type]

    monkeypatch.setattr(ColPaliEmbedder, "embed_pages", spy)
    opts = options(tmp_path, model_cache, "tiny-colqwen2")
    opts.dpi = 150
    report = ingest([poster], opts)
    assert report.pages_added == 6
    sizes = [size for flush in seen for size in flush]
    assert len(sizes) == 6 and all(w * h < 1_000_000 for w, h in sizes)  # never the 56 Mpx render
    assert all(sum(w * h * 3 for w, h in flush) <= 5_000_000 + 3_000_000 for flush in seen)  # bounded by bytes
    assert len(seen) >= 2


def test_every_frame_of_a_multipage_image(tmp_path: Path, model_cache: Path) -> None:
    frames = [Image.new("RGB", (200, 260), colour) for colour in ("white", "grey", "black")]
    frames[0].save(tmp_path / "scan.tiff", save_all=True, append_images=frames[1:])
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:2])
    report = ingest([tmp_path / "scan.tiff", tmp_path / "anim.gif"], options(tmp_path, model_cache))
    assert report.pages_added == 5 and report.pages_without_text == 5
    assert pages_stored(tmp_path / "index") == Counter({("scan.tiff", 1): 1, ("scan.tiff", 2): 1,
                                                        ("scan.tiff", 3): 1, ("anim.gif", 1): 1,
                                                        ("anim.gif", 2): 1})


def test_a_document_that_renders_fewer_pages_than_counted_is_reported(tmp_path: Path, model_cache: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The file was cut short between planning and rendering: its document is
    reported as failed, not silently left out, and the others are stored."""
    docs = tmp_path / "docs"
    docs.mkdir()
    for name, count in (("short.pdf", 3), ("fine.pdf", 2)):
        (docs / name).write_bytes(blank_pdf(count, 300, 400, text=name))
    real = pipeline.render_pages

    def cut_short(doc, dpi, fit=None):  # type: ignore[no-untyped-def]
        pages = real(doc, dpi, fit=fit)
        return (p for n, p in enumerate(pages) if doc.path.name != "short.pdf" or n == 0)

    monkeypatch.setattr(pipeline, "render_pages", cut_short)
    report = ingest([docs], options(tmp_path, model_cache))
    assert [p for p in report.problems if "short.pdf" in str(p) and "1 pages rendered, 3 expected" in str(p)]
    assert set(pages_stored(tmp_path / "index")) == {("fine.pdf", 1), ("fine.pdf", 2)}
