"""Format 3 over many commits: upkeep, upgrades from format 2, one model per index, phrases."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ragged.errors import IndexStoreError, ModelMismatchError
from ragged.index import page_table, upkeep, writing
from ragged.index.store import IndexStore, StoredPage
from tests.fakes import cpu_searcher
from tests.index.legacy_index import build_format_2

DIM = 8
MODEL = "org/model"


def doc(n: int) -> str:
    return f"{n:064x}"


def vectors(n: int, pages: int = 2) -> list[np.ndarray]:
    rng = np.random.default_rng(n)
    return [rng.standard_normal((4 + p, DIM)).astype(np.float32) for p in range(pages)]


def scores(folder: Path) -> np.ndarray:
    return cpu_searcher(IndexStore.open(folder)).score_all([np.ones((3, DIM), np.float32)])


def files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def test_commits_keep_files_and_versions_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With upkeep every few commits and nothing held by readers, old LanceDB
    versions and fragments go, and emptied segment files are compacted away:
    the file count follows the documents, not the commits."""
    monkeypatch.setattr(page_table, "RETAIN_S", 0.0)
    monkeypatch.setattr(upkeep, "RETAIN_S", 0.0)
    monkeypatch.setattr(writing, "UPKEEP_MIN_COMMITS", 8)
    monkeypatch.setattr("ragged.index.segments.SEGMENT_BYTES", 8192)  # a few documents a file (832 bytes each)
    index = tmp_path / "index"
    store = IndexStore.open_for_writing(index, MODEL)
    counts = []
    for n in range(1, 81):
        store.add_document(doc(n), f"/docs/{n}.pdf", vectors(n))
        if n % 20 == 0:
            counts.append(files(index))
    store.remove_documents([doc(n) for n in range(1, 41)])  # the first files become dead space
    store.finish()
    store.close()
    assert max(counts) < 80  # not one or more files per commit
    versions = list((index / "lancedb" / "pages.lance" / "_versions").glob("*.manifest"))
    assert len(versions) <= 10, len(versions)
    live = IndexStore.open(index).catalog()
    assert live.documents == [doc(n) for n in range(41, 81)]
    used = {e.file for extents in [*live.extents.values(), *live.pooled.values()] for e in extents}
    on_disk = {int(p.stem) for p in (index / "segments").glob("*.seg")}
    assert on_disk == used  # files of removed documents compacted and deleted
    expected = [float((np.ones((3, DIM)) @ p.astype(np.float16).astype(np.float64).T).max(axis=1).sum())
                for n in range(41, 81) for p in vectors(n)]
    np.testing.assert_allclose(scores(index)[:, 0], expected, rtol=1e-5)


def test_a_format_2_index_is_upgraded_without_embedding(tmp_path: Path) -> None:
    index = tmp_path / "old"
    build_format_2(index, {doc(n): (f"/docs/{n}.pdf", vectors(n)) for n in (1, 2, 3)}, texts=True)
    before = scores(index)
    old_keyword = IndexStore.open(index).keyword("lemons", 10)
    assert IndexStore.open(index).legacy and len(old_keyword) == 6
    store = IndexStore.open_for_writing(index, MODEL)
    store.add_document(doc(4), "/docs/4.pdf", vectors(4))
    store.close()
    assert json.loads((index / "ragged-index.json").read_text())["format"] == 3
    reader = IndexStore.open(index)
    assert reader.catalog().documents == [doc(n) for n in (1, 2, 3, 4)]
    np.testing.assert_array_equal(scores(index)[:6], before)  # the same vectors, not embedded again
    assert not list((index / "segments").glob("*.npy")) and not (index / "catalog.json").exists()
    assert "vectors" not in reader.pages.table().schema.names
    assert len(reader.keyword("lemons", 10)) == 6
    assert reader.keyword('"about lemons"', 10)  # the upgraded full-text index keeps word positions


def test_another_model_of_the_same_width_is_refused(tmp_path: Path) -> None:
    """ragged-index.json edited to name another model of the same width: the
    catalog records the model that made the vectors; search and ingest refuse."""
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        store.add_document(doc(1), "/docs/1.pdf", vectors(1))
    meta = json.loads((index / "ragged-index.json").read_text())
    (index / "ragged-index.json").write_text(json.dumps({**meta, "model": "org/other"}))
    with pytest.raises(ModelMismatchError, match=r"names 'org/other' .* made by 'org/model'"):
        IndexStore.open(index).catalog()
    with pytest.raises(ModelMismatchError, match=r"made by 'org/model'"):
        IndexStore.open_for_writing(index, "org/other")


def test_a_format_2_index_of_two_models_is_refused_at_its_upgrade(tmp_path: Path) -> None:
    index = tmp_path / "old"
    build_format_2(index, {doc(1): ("/docs/1.pdf", vectors(1))}, model="org/first")
    build_format_2(tmp_path / "other", {doc(2): ("/docs/2.pdf", vectors(2))}, model="org/second")
    (index / "ragged-index.json").write_text(json.dumps({"model": "org/second", "dim": DIM, "format": 2}))
    with pytest.raises(ModelMismatchError, match=r"holds vectors of \['org/first'\]"):
        IndexStore.open_for_writing(index, "org/second")


@pytest.mark.parametrize("query", ['"three months"', '"three months', 'notice "three months" period', '""'])
def test_quoted_phrases_are_never_damage(tmp_path: Path, query: str) -> None:
    index = tmp_path / "index"
    with IndexStore.open_for_writing(index, MODEL) as store:
        for n, text in enumerate(["three months notice", "months of three people", "nothing here"], 1):
            store.add_document(doc(n), f"/docs/{n}.pdf", [StoredPage(vectors(n, 1)[0], None, text)])
    notices: list[str] = []
    hits = IndexStore.open(index).keyword(query, 10, notices)
    if query == '"three months"':
        assert [h.doc_hash for h in hits] == [doc(1)] and notices == []  # a phrase, not two words


def test_a_phrase_in_an_index_without_positions_is_searched_as_words(tmp_path: Path) -> None:
    index = tmp_path / "old"
    build_format_2(index, {doc(n): (f"/docs/{n}.pdf", vectors(n)) for n in (1, 2)}, texts=True)
    notices: list[str] = []
    hits = IndexStore.open(index).keyword('"about lemons"', 10, notices)
    assert len(hits) == 4 and any("separate words" in n for n in notices)


def test_pieces_are_invisible_until_the_last_and_then_whole(tmp_path: Path) -> None:
    index = tmp_path / "index"
    store = IndexStore.open_for_writing(index, MODEL)
    store.add_document(doc(1), "/docs/big.pdf", vectors(1))
    pages = vectors(2, pages=6)
    writer = store.begin_document(doc(2), "/docs/big.pdf", 6)  # replaces doc 1 at the same path
    for start in (0, 2, 4):
        assert IndexStore.open(index).catalog().documents == [doc(1)]  # the old version, whole
        writer.add(pages[start : start + 2], final=start == 4)
    store.close()
    catalog = IndexStore.open(index).catalog()
    assert catalog.documents == [doc(2)] and len(catalog.pages) == 6 and len(catalog.extents[doc(2)]) == 3
    expected = [float((np.ones((3, DIM)) @ p.astype(np.float16).astype(np.float64).T).max(axis=1).sum())
                for p in pages]
    np.testing.assert_allclose(scores(index)[:, 0], expected, rtol=1e-5)
    with pytest.raises(IndexStoreError, match="cannot be committed"):
        IndexStore.open_for_writing(index, MODEL).begin_document(doc(3), "/docs/x.pdf", 2).commit()


def test_an_upgrade_cut_short_leaves_format_2_and_is_done_again(tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Everything of format 3 is written before ragged-index.json says so: an
    upgrade stopped before that switch leaves a format-2 index that reads as
    before, and the next writer upgrades it."""
    index = tmp_path / "old"
    build_format_2(index, {doc(n): (f"/docs/{n}.pdf", vectors(n)) for n in (1, 2)})
    before = scores(index)

    def crash(*args: object) -> None:
        raise KeyboardInterrupt  # as a kill would stop it: before the switch

    monkeypatch.setattr("ragged.index.store.write_meta", crash)
    with pytest.raises(KeyboardInterrupt):
        IndexStore.open_for_writing(index, MODEL)
    monkeypatch.undo()
    assert IndexStore.open(index).legacy and (index / "catalog").is_dir()  # the new files there, unused
    np.testing.assert_array_equal(scores(index), before)
    IndexStore.open_for_writing(index, MODEL).close()
    assert not IndexStore.open(index).legacy
    np.testing.assert_array_equal(scores(index), before)
    assert len(list((index / "segments").glob("*.seg"))) == 1
