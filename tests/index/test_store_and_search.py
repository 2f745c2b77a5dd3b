"""The index store and exact MaxSim search, on synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ragged.errors import IndexStoreError, ModelMismatchError
from ragged.gpu import DeviceManager, DeviceType
from ragged.gpu.runtime import Runtime
from ragged.index import search as search_module
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore
from ragged.multivector.maxsim import segment_max
from tests.fakes import cpu_searcher

DIM = 16


def random_docs(rng: np.random.Generator, docs: int, pages: int, equal: bool) -> dict[str, list[np.ndarray]]:
    out = {}
    for d in range(docs):
        lengths = [30] * pages if equal else rng.integers(5, 60, pages).tolist()
        vecs = [rng.standard_normal((n, DIM)).astype(np.float32) for n in lengths]
        out[f"{d:064x}"] = [v / np.linalg.norm(v, axis=1, keepdims=True) for v in vecs]
    return out


def brute_force(queries: list[np.ndarray], pages: list[np.ndarray]) -> np.ndarray:
    """float64 reference on the fp16-rounded vectors the index stores."""
    return np.array([[float((q.astype(np.float64) @ p.astype(np.float16).astype(np.float64).T).max(axis=1).sum())
                      for q in queries] for p in pages])


@pytest.fixture
def store(tmp_path: Path) -> IndexStore:
    return IndexStore.open_for_writing(tmp_path / "index", "org/model-a")


@pytest.mark.parametrize("equal", [True, False], ids=["equal-pages", "ragged-pages"])
def test_search_is_exact_and_ordered(store: IndexStore, equal: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    docs = random_docs(rng, docs=7, pages=5, equal=equal)
    for doc_hash, pages in docs.items():
        store.add_document(doc_hash, f"/docs/{doc_hash[-1]}.pdf", pages)  # absolute paths: one document each
    monkeypatch.setattr(search_module, "CPU_CHUNK_VECTORS", 100)  # many chunks, pages across boundaries
    searcher = cpu_searcher(IndexStore.open(store.folder))
    queries = [rng.standard_normal((n, DIM)).astype(np.float32) for n in (3, 7)]
    all_pages = [p for pages in docs.values() for p in pages]
    expected = brute_force(queries, all_pages)  # (pages, queries)
    np.testing.assert_allclose(searcher.score_all(queries), expected, rtol=1e-4, atol=1e-4)
    hits = searcher.search(queries, k=5)
    for column, query_hits in enumerate(hits):
        assert [round(h.score, 3) for h in query_hits] == [round(s, 3) for s in sorted(expected[:, column])[::-1][:5]]
        best = int(np.argmax(expected[:, column]))
        doc_index, page_index = divmod(best, 5)
        assert (query_hits[0].doc_hash, query_hits[0].page) == (list(docs)[doc_index], page_index + 1)


def test_segment_max_matches_numpy() -> None:
    """The accelerator kernel (scatter_reduce), run here on CPU tensors,
    against NumPy's reduceat (the CPU kernel's)."""
    import torch

    rng = np.random.default_rng(0)
    sims = rng.standard_normal((20, 3)).astype(np.float32)
    lengths = [2, 5, 1, 12]
    got = segment_max(torch.from_numpy(sims), lengths).numpy()
    starts = np.cumsum([0, *lengths[:-1]])
    np.testing.assert_array_equal(got, np.maximum.reduceat(sims, starts, axis=0))


def test_reopen_lists_documents_once(store: IndexStore) -> None:
    rng = np.random.default_rng(2)
    docs = random_docs(rng, docs=3, pages=2, equal=False)
    for doc_hash, pages in docs.items():
        store.add_document(doc_hash, f"/d/{doc_hash}.pdf", pages)
    store.close()
    reopened = IndexStore.open(store.folder)
    assert reopened.known_hashes() == set(docs)
    catalog = reopened.catalog()
    assert [(p.doc_hash, p.page) for p in catalog.pages] == [(h, n) for h in docs for n in (1, 2)]
    assert [p.path for p in catalog.pages[::2]] == [f"/d/{h}.pdf" for h in docs]
    assert catalog.total_vectors == sum(len(p) for pages in docs.values() for p in pages)


def test_vectors_are_stored_once_and_read_in_place(store: IndexStore) -> None:
    """Format 3: the vectors are in the segment files only (LanceDB has no
    vectors column) and search reads them from the memory map."""
    rng = np.random.default_rng(3)
    (doc_hash, pages), = random_docs(rng, docs=1, pages=3, equal=False).items()
    store.add_document(doc_hash, "/d/p.pdf", pages)
    reader = IndexStore.open(store.folder)
    assert "vectors" not in reader.pages.table().schema.names
    ((first, lengths, vectors),) = list(reader.runs(reader.catalog()))
    assert first == 0 and lengths.tolist() == [len(p) for p in pages]
    assert isinstance(vectors.base, np.memmap) or isinstance(vectors, np.memmap)
    np.testing.assert_array_equal(vectors, np.concatenate(pages).astype(np.float16))
    np.testing.assert_array_equal(reader.page_vectors(doc_hash, 2), pages[1].astype(np.float16))


def test_uncommitted_pieces_are_invisible(store: IndexStore) -> None:
    """A run killed while writing a document in pieces leaves blocks and rows
    that search never reads and the next writer clears."""
    writer = store.begin_document("f" * 64, "/d/big.pdf", 4)
    writer.add([np.ones((4, DIM), dtype=np.float32)] * 2)
    assert IndexStore.open(store.folder).known_hashes() == set()
    assert cpu_searcher(IndexStore.open(store.folder)).catalog.pages == []
    store.close()
    reopened = IndexStore.open_for_writing(store.folder, "org/model-a")
    assert reopened.pages.doc_hashes() == set() and reopened.known_hashes() == set()
    reopened.close()


def test_model_mismatch_and_second_writer(store: IndexStore) -> None:
    store.add_document("a" * 64, "p.pdf", [np.ones((2, DIM), dtype=np.float32)])
    with pytest.raises(ModelMismatchError, match="org/model-a"):
        IndexStore.open_for_writing(store.folder, "org/model-b")
    with pytest.raises(IndexStoreError, match="Another 'ragged ingest'"):
        IndexStore.open_for_writing(store.folder, "org/model-a")
    store.close()
    IndexStore.open_for_writing(store.folder, "org/model-a").close()


def test_unwritable_and_missing_indexes(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(IndexStoreError, match="not writable"):
        IndexStore.open_for_writing(blocker / "index", "org/m")
    with pytest.raises(IndexStoreError, match="No index at"):
        IndexStore.open(tmp_path / "nothing")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "ragged-index.json").write_text("{not json")
    with pytest.raises(IndexStoreError, match="damaged"):
        IndexStore.open(tmp_path / "bad")


def test_search_recovers_from_oom_by_smaller_chunks(store: IndexStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Scoring that runs out of memory with large chunks is retried smaller."""
    from ragged.multivector.maxsim import QueryBlock
    from tests.fakes import oom_message

    rng = np.random.default_rng(4)
    docs = random_docs(rng, docs=2, pages=40, equal=False)  # about 1,300 vectors a document
    for doc_hash, pages in docs.items():
        store.add_document(doc_hash, f"/d/{doc_hash}.pdf", pages)
    searcher = cpu_searcher(store)
    queries = [rng.standard_normal((4, DIM)).astype(np.float32)]
    expected = searcher.score_all(queries)
    monkeypatch.setattr(search_module, "CPU_CHUNK_VECTORS", 4096)
    tried: list[int] = []
    real_score = QueryBlock.score_columns

    def score_columns(self: QueryBlock, block: np.ndarray, lengths: object) -> np.ndarray:
        tried.append(int(block.shape[1]))
        if block.shape[1] > 1100:
            raise RuntimeError(oom_message(DeviceType.CPU, 10**9))  # the CPU allocator's real wording
        return real_score(self, block, lengths)  # type: ignore[arg-type]

    monkeypatch.setattr(QueryBlock, "score_columns", score_columns)
    np.testing.assert_allclose(searcher.score_all(queries), expected, rtol=1e-6)
    # 4,096 fails, 2,048 fails (a whole document is larger), 1,024 works.
    assert searcher.oom_handler.stats.as_dict() == {
        "ooms": 2, "failures": 0, "clear_cache": 0, "reduce_batch": 2, "cpu_fallback": 0
    }
    assert max(tried[-4:]) <= 1024
    tried.clear()
    np.testing.assert_allclose(searcher.score_all(queries), expected, rtol=1e-6)
    assert max(tried) <= 1024 and searcher.oom_handler.stats.ooms == 2  # the next search starts at what worked


def test_device_search_with_a_budget_smaller_than_a_page(store: IndexStore,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """On a nearly full card the chunk shrinks to its minimum (1,024 vectors),
    below a ColPali page (1,030): the page is a block of its own and still fits
    the buffers. (A fake card whose tensors live on the CPU.)"""
    from ragged.gpu import DeviceInfo
    from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu

    rng = np.random.default_rng(9)
    pages = [rng.standard_normal((1030, DIM)).astype(np.float32) for _ in range(3)]
    store.add_document("f" * 64, "/d/long.pdf", pages)
    expected = cpu_searcher(store).score_all([pages[1][:5]])
    card = FakeCard(total=10 * GiB, allocated=int(6.6 * GiB), reserved=int(6.6 * GiB))  # above the 65% line
    manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
    monkeypatch.setattr(DeviceInfo, "torch_device", property(lambda self: torch.device("cpu")))
    searcher = MaxSimSearcher(store, manager.get_optimal_device("cuda:0"), Runtime(manager))
    assert searcher._chunk_vectors(DIM, 5) == search_module.MIN_CHUNK_VECTORS < 1030
    np.testing.assert_allclose(searcher.score_all([pages[1][:5]]), expected, rtol=1e-5)


def test_a_page_without_vectors_is_refused_before_anything_is_written(store: IndexStore) -> None:
    # Nothing to search or pool: a clear error naming the page, and the index as it was (the other document stays).
    rng = np.random.default_rng(5)
    good = [rng.standard_normal((30, 16)).astype(np.float32) for _ in range(2)]
    store.add_document("a" * 64, "/docs/a.pdf", good)
    segments = sorted(p.stat().st_size for p in (store.folder / "segments").glob("*.seg"))
    with pytest.raises(IndexStoreError, match="Page 2 of document bbbbbbbbbbbb has no vectors"):
        store.add_document("b" * 64, "/docs/b.pdf", [good[0], np.zeros((0, 16), dtype=np.float32)])
    assert sorted(p.stat().st_size for p in (store.folder / "segments").glob("*.seg")) == segments
    store.add_document("c" * 64, "/docs/c.pdf", good)  # the store goes on
    assert [d.path for d in IndexStore.open(store.folder).documents()] == ["/docs/a.pdf", "/docs/c.pdf"]
