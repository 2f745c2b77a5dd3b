"""The candidate stage: written with each commit, never rebuilt, built for
older indexes from their vectors, and candidates + exact MaxSim ranking as
a full scan does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ragged.gpu import DeviceManager
from ragged.index import candidates, writing
from ragged.index.catalog_log import CATALOG_DIR, CatalogLog, CatalogReader
from ragged.index.resident import ENTER_SHARE, RESIDENT_SHARE, ResidentIndex
from ragged.index.store import IndexStore
from ragged.multivector.pooling import POOLED, pool_pages
from tests.fakes import cpu_searcher
from tests.index.legacy_index import build_format_2

DIM = 16
MODEL = "org/model"


def doc(n: int) -> str:
    return f"{n:064x}"


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


TOPICS = unit(np.random.default_rng(99).standard_normal((40, DIM)))


def topic_pages(first: int, count: int) -> list[np.ndarray]:
    """Pages of 30-50 vectors near 2-4 of the topics (structure, as real pages have)."""
    out = []
    for n in range(first, first + count):
        rng = np.random.default_rng(n)
        topics = rng.choice(len(TOPICS), int(rng.integers(2, 5)), replace=False)
        size = int(rng.integers(30, 51))
        out.append(unit(TOPICS[topics[rng.integers(0, len(topics), size)]] + 0.15 * rng.standard_normal((size, DIM))))
    return out


def topic_query(n: int) -> np.ndarray:
    """Six vectors near two of page ``n``'s topics."""
    rng = np.random.default_rng(n)
    topics = rng.choice(len(TOPICS), int(rng.integers(2, 5)), replace=False)[:2]
    q = np.random.default_rng(1000 + n)
    return unit(TOPICS[topics[q.integers(0, 2, 6)]] + 0.1 * q.standard_normal((6, DIM)))


def build(folder: Path, docs: int, pages: int = 10) -> Path:
    with IndexStore.open_for_writing(folder, MODEL) as store:
        for d in range(docs):
            store.add_document(doc(d * pages), f"/docs/{d}.pdf", topic_pages(d * pages, pages))
    return folder


def hits(searcher: object, query: np.ndarray, exact: bool, k: int = 10) -> list[tuple[str, int, float]]:
    found = searcher.search([query], k, exact=exact)[0]  # type: ignore[attr-defined]
    return [(h.doc_hash, h.page, h.score) for h in found]


def pooled_of(store: IndexStore) -> dict[tuple[str, int], np.ndarray]:
    """Every staged page's pooled vectors, read from the files."""
    catalog = store.catalog()
    out = {}
    for first, pages, vectors in store.pooled_runs(catalog):
        for n in range(pages):
            record = catalog.pages[first + n]
            out[(record.doc_hash, record.page)] = np.asarray(vectors[n * POOLED : (n + 1) * POOLED], np.float32)
    return out


@pytest.fixture
def small_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first round and probe small enough that 300 pages go through the stage."""
    monkeypatch.setattr(candidates, "CANDIDATES", 24)
    monkeypatch.setattr(candidates, "PROBE", 8)


def test_each_commit_writes_its_stage_and_no_change_rebuilds_another(tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    pooled: list[int] = []
    real = writing.pool_pages
    monkeypatch.setattr(writing, "pool_pages", lambda v, lengths: (pooled.append(len(lengths)), real(v, lengths))[1])
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/docs/a.pdf", topic_pages(0, 2))
        store.add_document(doc(2), "/docs/b.pdf", topic_pages(2, 3))
        assert store._log is not None
        docs = store._log.state.docs
        assert pooled == [2, 3]
        kept = list(docs[doc(2)].pooled)
        store.move_document(doc(2), "/docs/moved.pdf")
        store.remove_documents([doc(1)])
        assert pooled == [2, 3] and docs[doc(2)].pooled == kept  # a move or a removal pools nothing
        store.add_document(doc(3), "/docs/moved.pdf", topic_pages(5, 1))  # replaces document 2 at its path
        store.add_document(doc(4), "/docs/c.pdf", topic_pages(6, 2))
        writer = store.begin_document(doc(5), "/docs/long.pdf", 3)  # a long document, in pieces
        writer.add(topic_pages(8, 2))
        writer.add(topic_pages(10, 1), final=True)
        assert pooled == [2, 3, 1, 2, 2, 1]  # each commit and piece pooled its own pages, once
    catalog = IndexStore.open(index).catalog()
    assert catalog.documents == [doc(3), doc(4), doc(5)] and bool(catalog.staged.all())
    stored = pooled_of(IndexStore.open(index))
    assert set(stored) == {(p.doc_hash, p.page) for p in catalog.pages}
    for record in catalog.pages:  # each page's stage is its own vectors, pooled
        vectors = np.asarray(IndexStore.open(index).page_vectors(record.doc_hash, record.page))
        np.testing.assert_allclose(stored[(record.doc_hash, record.page)], pool_pages(vectors, [len(vectors)]),
                                   atol=2e-3)


def test_an_index_without_the_stage_is_searched_exactly_then_gets_it_from_its_vectors(
        tmp_path: Path, small_rounds: None) -> None:
    """An index written before the stage (its records name no pooled blocks,
    as an older ragged's catalog) is searched by exact MaxSim of every page;
    the next writer's upkeep pools the stored vectors (nothing embedded)."""
    index = build(tmp_path / "index", 30)
    with_stage = pooled_of(IndexStore.open(index))
    reader = CatalogReader(index / CATALOG_DIR)
    reader.update()
    assert reader.state is not None
    for entry in reader.state.docs.values():
        entry.pooled = []
    CatalogLog.create(index / CATALOG_DIR, reader.state).close()  # the catalog an older writer would leave
    old = IndexStore.open(index)
    assert not old.catalog().pooled and not old.catalog().staged.any()
    query = topic_query(123)
    exact = hits(cpu_searcher(old), query, exact=True)
    assert hits(cpu_searcher(IndexStore.open(index)), query, exact=False) == exact
    assert np.isfinite(cpu_searcher(IndexStore.open(index)).score_candidates([query], 10)).all()  # every page
    with IndexStore.open_for_writing(index, MODEL) as store:
        assert store.needs_stage()
        store.finish()
        assert not store.needs_stage()
    rebuilt = pooled_of(IndexStore.open(index))
    assert rebuilt.keys() == with_stage.keys()
    for page, vectors in rebuilt.items():
        np.testing.assert_array_equal(vectors, with_stage[page])  # deterministic: the same stage again
    assert hits(cpu_searcher(IndexStore.open(index)), query, exact=False) == exact


def test_a_format_2_index_gets_the_stage_when_upgraded(tmp_path: Path) -> None:
    index = tmp_path / "old"
    build_format_2(index, {doc(n): (f"/docs/{n}.pdf", topic_pages(n * 2, 2)) for n in (1, 2, 3)})
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.finish()
    catalog = IndexStore.open(index).catalog()
    assert len(catalog.pages) == 6 and bool(catalog.staged.all())


def test_candidates_then_exact_maxsim_rank_as_a_full_scan(tmp_path: Path, small_rounds: None) -> None:
    index = build(tmp_path / "index", 30)  # 300 pages
    searcher = cpu_searcher(IndexStore.open(index))
    for n in (5, 77, 150, 299):
        query = topic_query(n)
        exact, found = hits(searcher, query, exact=True), hits(searcher, query, exact=False)
        assert [h[:2] for h in found] == [h[:2] for h in exact]
        np.testing.assert_allclose([h[2] for h in found], [h[2] for h in exact], rtol=1e-6)
        scored = np.isfinite(searcher.score_candidates([query], 10)[:, 0]).sum()  # type: ignore[attr-defined]
        assert scored < 150  # the stage chose: most pages were never scored exactly


def test_a_stage_that_cannot_tell_pages_apart_widens_to_a_full_scan(tmp_path: Path, small_rounds: None) -> None:
    """Pages that all look alike but differ in one detail (as with a model of
    random weights): pooling loses the detail, the probe sees the stage
    underrate pages, and the candidates widen until the ranking is exact."""
    template = unit(np.random.default_rng(5).standard_normal((40, DIM)))
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        for d in range(30):
            pages = []
            for n in range(d * 10, d * 10 + 10):
                page = template.copy()
                page[n % 40] = unit(np.random.default_rng(n).standard_normal(DIM))  # the detail
                pages.append(page)
            store.add_document(doc(d), f"/docs/{d}.pdf", pages)
    searcher = cpu_searcher(IndexStore.open(index))
    query = unit(np.random.default_rng(77).standard_normal((6, DIM)))
    assert hits(searcher, query, exact=False) == hits(searcher, query, exact=True)
    assert np.isfinite(searcher.score_candidates([query], 10)).all()  # type: ignore[attr-defined]


@pytest.mark.parametrize("room", ["everything", "fp16", "stage only"])
def test_every_resident_form_searches_as_the_files(tmp_path: Path, small_rounds: None,
                                                   monkeypatch: pytest.MonkeyPatch, room: str) -> None:
    index = build(tmp_path / "index", 30)
    catalog = IndexStore.open(index).catalog()
    stage = len(catalog.pages) * POOLED * DIM * 4
    full = catalog.total_vectors * DIM
    f32, fp16 = full * 4 + stage, full * 2 + stage
    between = {"everything": 2 * f32, "fp16": (f32 + fp16) / 2, "stage only": (fp16 + stage) / 2}[room]
    budget = int(between / RESIDENT_SHARE / ENTER_SHARE)  # what a form coming from streamed may take
    monkeypatch.setattr("ragged.gpu.policy.MemoryPolicy.batch_budget", lambda self, info: budget)
    resident = ResidentIndex(IndexStore.open(index), DeviceManager().cpu(), DeviceManager(), background=False)
    expected = {"everything": "f32 in RAM", "fp16": "fp16 in RAM", "stage only": "stage in RAM, vectors mapped"}
    assert resident.form == expected[room]
    if room == "stage only":
        assert resident.memory_bytes == stage  # the stage alone, in f32: the vectors stay in the files
    files = cpu_searcher(IndexStore.open(index))
    held = cpu_searcher(resident)
    for n in (3, 140, 260):
        query = topic_query(n)
        assert hits(held, query, exact=False) == hits(files, query, exact=False)
        want = hits(files, query, exact=True)
        got = hits(held, query, exact=True)
        assert [g[:2] for g in got] == [w[:2] for w in want]
        np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-5)
    resident.release()


def test_ingest_with_nothing_new_builds_the_stage_of_an_older_index(tmp_path: Path) -> None:
    """``ragged ingest`` on an index from before the stage, with no file to
    embed, pools the stored vectors (no model is loaded; nothing embedded)."""
    from ragged.ingest.pipeline import IngestOptions, ingest

    index = build(tmp_path / "index", 3)
    reader = CatalogReader(index / CATALOG_DIR)
    reader.update()
    assert reader.state is not None
    for entry in reader.state.docs.values():
        entry.pooled = []
    CatalogLog.create(index / CATALOG_DIR, reader.state).close()
    assert not IndexStore.open(index).catalog().staged.any()
    empty = tmp_path / "nothing"
    empty.mkdir()
    report = ingest([empty], IngestOptions(index_dir=index, model=MODEL, text_model=None))
    assert report.pages_added == 0 and report.documents_removed == 0  # (the empty folder is reported)
    catalog = IndexStore.open(index).catalog()
    assert len(catalog.pages) == 30 and bool(catalog.staged.all())


def test_reads_of_scattered_blocks_are_announced_to_the_kernel_first(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # A one-off search reads the stage and its candidates from many small blocks; it hints every byte range
    # it will read before the first, so a cold page cache serves them in parallel. The hints name exactly
    # the bytes that come back (checked against the files), and without posix_fadvise nothing changes.
    import os

    from ragged.index.segments import MAGIC

    store = IndexStore.open(build(tmp_path / "index", 6))
    catalog = store.catalog()
    hinted: list[tuple[str, int, int]] = []
    names: dict[int, str] = {}
    real_open = os.open

    def opened(path: object, flags: int, *args: object) -> int:
        fd = real_open(path, flags, *args)  # type: ignore[arg-type]
        names[fd] = str(path)
        return fd

    monkeypatch.setattr(os, "open", opened)
    monkeypatch.setattr(os, "POSIX_FADV_WILLNEED", getattr(os, "POSIX_FADV_WILLNEED", 3), raising=False)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, advice: hinted.append(
        (names[fd], offset, size)) if advice == os.POSIX_FADV_WILLNEED else None, raising=False)
    from ragged.index import segments

    reads: list[int] = []  # how many ranges had been hinted when each block was read
    real_vectors = segments.SegmentMaps.vectors
    monkeypatch.setattr(segments.SegmentMaps, "vectors", lambda self, *a, **k: (
        reads.append(len(hinted)), real_vectors(self, *a, **k))[1])

    def read(name: str, offset: int, size: int) -> bytes:
        with open(name, "rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    wanted = np.array([3, 4, 17, 41, 58])
    gathered = list(store.gather(catalog, wanted))
    assert np.concatenate([p for p, _, _ in gathered]).tolist() == wanted.tolist()
    pages = [v for _, ns, block in gathered for v in np.split(block, np.cumsum(ns)[:-1])]  # (n, DIM) fp16 each
    heads = [h for h in hinted if read(*h).startswith(MAGIC)]
    rows = [h for h in hinted if h not in heads]
    assert len(heads) == 4 and len(rows) == len(wanted)  # documents 0, 1, 4 and 5; one range per page
    assert [read(*h) for h in rows] == [v.tobytes() for v in pages]  # exactly the bytes read, no more
    assert reads and min(reads) == len(hinted)  # every range was hinted before the first block was read

    hinted.clear()
    pooled = [v.tobytes() for _, _, v in store.pooled_runs(catalog)]
    announced = [read(*h) for h in hinted]
    assert len(pooled) == len(announced) == 6 and all(v in a for v, a in zip(pooled, announced, strict=True))

    monkeypatch.delattr(os, "posix_fadvise")
    again = list(IndexStore.open(tmp_path / "index").gather(catalog, wanted))
    assert all(np.array_equal(a[2], b[2]) for a, b in zip(again, gathered, strict=True))


def test_read_ahead_stays_a_bounded_window_ahead_of_the_reader(monkeypatch: pytest.MonkeyPatch) -> None:
    # A widened search or a resident load reads thousands of blocks: hinting all of them at once would ask
    # the page cache for gigabytes it cannot keep until they are read. Every item is hinted before it is
    # read, and what is hinted but not yet read stays within the window.
    from ragged.index import segments

    monkeypatch.setattr(segments, "READ_AHEAD", 1000)
    hinted: list[int] = []  # item numbers, in the order they were hinted

    class Maps:
        def prefetch(self, ranges: list[tuple[int, int, int]]) -> None:
            hinted.extend(number for number, _, _ in ranges)

    sizes = [300, 50, 700, 10, 10, 900, 400, 5, 1200, 100]
    read: list[int] = []
    seen: list[list[int]] = []  # what had been hinted as each item was reached
    for item in segments.read_ahead(Maps(), list(range(len(sizes))), lambda n: [(n, 0, sizes[n])]):  # type: ignore[arg-type]
        assert item in hinted  # hinted before it is read
        ahead = sum(sizes[n] for n in hinted if n not in read)
        assert ahead <= 1000 + max(sizes)  # the window, overshot by at most one item
        seen.append(list(hinted))
        read.append(item)
    assert read == hinted == list(range(len(sizes)))  # each hinted once, in order
    # Ahead, not item by item: the first group fills the window (300 + 50 + 700 > 1000); it is topped up
    # only once half or less of it is left unread (after item 2: 0 left), again to the window.
    assert seen[0] == seen[1] == seen[2] == [0, 1, 2]
    assert seen[3] == [0, 1, 2, 3, 4, 5, 6]  # 10 + 10 + 900 + 400 > 1000


def test_an_empty_range_is_not_hinted_as_the_rest_of_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # posix_fadvise reads a length of 0 as "to the end of the file": a page without vectors must not ask
    # the kernel to read the rest of a segment file.
    import os

    from ragged.index.segments import SEGMENTS, SegmentMaps, segment_name

    folder = tmp_path / SEGMENTS
    folder.mkdir()
    (folder / segment_name(1)).write_bytes(b"\0" * 8192)
    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(os, "POSIX_FADV_WILLNEED", getattr(os, "POSIX_FADV_WILLNEED", 3), raising=False)
    monkeypatch.setattr(os, "posix_fadvise", lambda fd, offset, size, advice: calls.append((offset, size)),
                        raising=False)
    SegmentMaps(folder, DIM).prefetch([(1, 64, 0), (1, 128, 256), (2, 0, 64)])  # file 2 does not exist
    assert calls == [(128, 256)]
    monkeypatch.delattr(os, "POSIX_FADV_WILLNEED")
    SegmentMaps(folder, DIM).prefetch([(1, 128, 256)])  # a platform without the advice: nothing, no error
    assert calls == [(128, 256)]
