"""Damaged, hostile and shared indexes: repair, one-line errors, no escapes."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from loguru import logger

from ragged.errors import IndexStoreError
from ragged.index import catalog_log as log_module
from ragged.index import files as files_module
from ragged.index import segments as segments_module
from ragged.index.store import IndexStore
from tests.fakes import cpu_searcher
from tests.index.legacy_index import build_format_2

DIM = 8
MODEL = "org/model"


def doc(n: int) -> str:
    return f"{n:064x}"


def build(folder: Path, docs: int = 3, pages: int = 2) -> IndexStore:
    rng = np.random.default_rng(docs)
    store = IndexStore.open_for_writing(folder, MODEL)
    for d in range(docs):
        store.add_document(doc(d + 1), f"/docs/{d}.pdf",
                           [rng.standard_normal((5 + p, DIM)).astype(np.float32) for p in range(pages)])
    store.close()
    return IndexStore.open(folder)


def scores(folder: Path) -> np.ndarray:
    query = [np.ones((3, DIM), dtype=np.float32)]
    return cpu_searcher(IndexStore.open(folder)).score_all(query)


@pytest.fixture
def index(tmp_path: Path) -> Path:
    build(tmp_path / "index")
    return tmp_path / "index"


def segment_file(index: Path) -> Path:
    (found,) = sorted((index / "segments").glob("*.seg"))
    return found


def docs_of(index: Path) -> list[str]:
    return IndexStore.open(index).catalog().documents


@pytest.fixture
def warnings() -> Iterator[list[str]]:
    seen: list[str] = []
    handler = logger.add(lambda m: seen.append(str(m)), level="WARNING")
    yield seen
    logger.remove(handler)


@pytest.mark.parametrize("damage", ["cut short", "deleted"])
def test_lost_vectors_leave_their_documents_out_until_ingested_again(index: Path, damage: str,
                                                                     warnings: list[str]) -> None:
    """One copy of the vectors: a segment file cut short or deleted cannot be
    rebuilt. Search leaves out the documents it held, and says so; the next
    writer drops them from the catalog so that ingest embeds them again."""
    path = segment_file(index)
    first = IndexStore.open(index).catalog().extents[doc(1)][0]
    if damage == "cut short":
        os.truncate(path, first.end(DIM) + 10)  # the first document whole, the others cut
        left = [doc(1)]
    else:
        path.unlink()
        left = []
    assert docs_of(index) == left
    assert scores(index).shape == (2 * len(left), 1)
    assert any("left out of search" in w and "ragged ingest" in w for w in warnings)
    IndexStore.open_for_writing(index, MODEL).close()
    assert docs_of(index) == left and any("embedded again" in w for w in warnings)


def test_a_block_that_is_not_the_catalogs_is_refused(index: Path, warnings: list[str]) -> None:
    """A block overwritten (its header names another document) is never scored
    as the document the catalog names."""
    path = segment_file(index)
    second = IndexStore.open(index).catalog().extents[doc(2)][0]
    with path.open("r+b") as fh:
        fh.seek(second.offset + 8)
        fh.write(bytes.fromhex(doc(7)))
    with pytest.raises(IndexStoreError, match=r"damaged: .* does not hold pages 1-2 of document .*ragged ingest"):
        scores(index)
    IndexStore.open_for_writing(index, MODEL).close()  # the next writer leaves it out, with a warning
    assert docs_of(index) == [doc(1), doc(3)] and any("left out of the index" in w for w in warnings)


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "wrong width", "not npy"])
def test_format_2_segments_are_rebuilt_from_lancedb(tmp_path: Path, damage: str, warnings: list[str]) -> None:
    """An index of format 2 is read as it is: a bad ``.npy`` segment is rebuilt
    from the vectors LanceDB still holds there, with a warning."""
    index = tmp_path / "old"
    rng = np.random.default_rng(5)
    build_format_2(index, {doc(d): (f"/docs/{d}.pdf", [rng.standard_normal((5 + p, DIM)) for p in range(2)])
                           for d in (1, 2, 3)})
    expected = scores(index)
    segment = index / "segments" / f"{doc(2)}.npy"
    original = np.load(segment)
    if damage == "missing":
        segment.unlink()
    elif damage == "empty":
        segment.write_bytes(b"")
    elif damage == "truncated":
        segment.write_bytes(segment.read_bytes()[:100])
    elif damage == "wrong width":
        np.save(segment, np.ones((11, DIM * 2), dtype=np.float16))
    else:
        segment.write_text("hello")
    np.testing.assert_allclose(scores(index), expected)
    np.testing.assert_array_equal(np.load(segment), original)  # repaired on disk, to the bit
    assert any("rebuilt from the page table" in w for w in warnings)


def test_catalog_damaged_or_lost_is_rebuilt_with_a_warning(index: Path, warnings: list[str]) -> None:
    expected = scores(index)
    (log,) = (index / "catalog").glob("log-*.jsonl")
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(lines[0].replace(b'"op"', b'"oq"', 1) + b"".join(lines[1:]))  # checksum no longer matches
    assert docs_of(index) == [doc(1), doc(2), doc(3)]
    np.testing.assert_allclose(scores(index), expected)
    assert any("is damaged" in w and "rebuilt" in w for w in warnings)
    import shutil

    shutil.rmtree(index / "catalog")
    warnings.clear()
    np.testing.assert_allclose(scores(index), expected)
    assert any("is missing" in w and "rebuilt" in w for w in warnings)
    IndexStore.open_for_writing(index, MODEL).close()  # the writer writes the rebuilt catalog down
    warnings.clear()
    np.testing.assert_allclose(scores(index), expected)
    assert warnings == []


def test_a_torn_last_record_is_not_a_commit(index: Path) -> None:
    """A record cut short by a crash (the last line) is ignored, and the next writer cuts it off."""
    (log,) = (index / "catalog").glob("log-*.jsonl")
    data = log.read_bytes()
    last = data[:-1].rfind(b"\n") + 1
    log.write_bytes(data[: last + 20])  # the third document's record, cut
    assert docs_of(index) == [doc(1), doc(2)]
    store = IndexStore.open_for_writing(index, MODEL)
    store.add_document(doc(4), "/docs/4.pdf", [np.ones((3, DIM), dtype=np.float32)])
    store.close()
    assert docs_of(index) == [doc(1), doc(2), doc(4)]
    assert IndexStore.open(index).pages.doc_hashes() == {doc(1), doc(2), doc(4)}  # the torn one's rows cleared


def test_lancedb_data_files_deleted(index: Path) -> None:
    for data in (index / "lancedb" / "pages.lance" / "data").iterdir():
        data.unlink()
    import shutil

    shutil.rmtree(index / "catalog")  # so the rows must be read
    with pytest.raises(IndexStoreError, match=r"is damaged: reading the page list failed .*new --index"):
        IndexStore.open(index).catalog()


def test_table_folder_deleted(index: Path) -> None:
    import shutil

    shutil.rmtree(index / "lancedb")
    assert scores(index).shape == (6, 1)  # the vectors and the catalog are not in LanceDB
    with pytest.raises(IndexStoreError, match=r"is damaged: its page table .* is missing"):
        IndexStore.open(index).keyword("anything", 5)
    shutil.rmtree(index / "catalog")
    with pytest.raises(IndexStoreError, match=r"is damaged: its catalog is missing and its page table .* missing"):
        IndexStore.open(index).catalog()


def test_a_reader_during_the_first_commit_sees_an_empty_index(tmp_path: Path) -> None:
    """While the first document is being written (its block and rows there,
    its record not yet), a reader (a search, the server) sees nothing, not damage."""
    index = tmp_path / "index"
    build(index, docs=1)
    (log,) = (index / "catalog").glob("log-*.jsonl")
    log.write_bytes(b"")  # the state just before the first record
    reader = IndexStore.open(index)
    assert reader.catalog().pages == [] and reader.keyword("anything", 5) == []
    assert scores(index).shape == (0, 1)
    writer = IndexStore.open_for_writing(index, MODEL)  # the next writer clears the leftovers
    writer.add_document(doc(9), "/docs/9.pdf", [np.ones((4, DIM), dtype=np.float32)])
    writer.close()
    assert [p.doc_hash for p in IndexStore.open(index).catalog().pages] == [doc(9)]
    assert IndexStore.open(index).pages.doc_hashes() == {doc(9)}


@pytest.mark.parametrize(("content", "message"), [
    ("[1, 2, 3]", "a JSON list, not an object"),
    ("null", "a JSON NoneType, not an object"),
    ("{not json", "not JSON"),
    ('{"model": "org/model", "dim": 8}', "no 'format' field"),
    ('{"model": "../../etc", "dim": 8, "format": 2}', "model '../../etc' is not a name ingest writes"),
    ('{"model": "org/model", "dim": -1, "format": 2}', "vector width -1"),
    ('{"model": "org/model", "dim": 8, "format": 99}', "format 99, made by a newer ragged"),
])
def test_bad_metadata_is_one_clear_error(index: Path, content: str, message: str) -> None:
    (index / "ragged-index.json").write_text(content)
    for opener in (IndexStore.open, lambda f: IndexStore.open_for_writing(f, MODEL)):
        with pytest.raises(IndexStoreError) as info:
            opener(index)
        assert message in str(info.value) and "\n" not in str(info.value)


def test_document_ids_never_become_paths(index: Path) -> None:
    """A doc_hash read from the catalog is checked before it names anything."""
    from ragged.index.catalog_log import encode

    (log,) = (index / "catalog").glob("log-*.jsonl")
    with log.open("ab") as fh:
        fh.write(encode({"op": "move", "hash": "../../x", "path": "/evil.pdf"}))
        fh.write(encode({"op": "lance"}))
    with pytest.raises(IndexStoreError, match=r"'\.\./\.\./x' is not a document id"):
        scores(index)


def test_links_inside_the_index_are_refused(index: Path, tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.mkdir()
    (index / ".lock").unlink(missing_ok=True)
    (index / ".lock").symlink_to(target / "lockfile")
    with pytest.raises(IndexStoreError, match="is a symbolic link"):
        IndexStore.open_for_writing(index, MODEL)
    assert not (target / "lockfile").exists()  # nothing created outside
    (index / ".lock").unlink()
    segments = index / "segments"
    segments.rename(target / "segments")
    segments.symlink_to(target / "segments")
    with pytest.raises(IndexStoreError, match="is a symbolic link"):
        IndexStore.open_for_writing(index, MODEL)
    before = {p.name: p.stat().st_size for p in (target / "segments").iterdir()}
    with pytest.raises(IndexStoreError, match="is a symbolic link"):
        scores(index)
    assert {p.name: p.stat().st_size for p in (target / "segments").iterdir()} == before


def test_files_follow_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "UMASK", 0o002)
    monkeypatch.setattr(segments_module, "UMASK", 0o002)
    monkeypatch.setattr(log_module, "UMASK", 0o002)
    folder = tmp_path / "shared"
    build(folder, docs=1)
    names = ["ragged-index.json", "segments/00000001.seg",
             *(str(p.relative_to(folder)) for p in (folder / "catalog").iterdir())]
    assert len(names) >= 4
    for name in names:
        mode = stat.S_IMODE((folder / name).stat().st_mode)
        assert mode == 0o664, (name, oct(mode))


def test_atomic_writes_are_synced_before_the_rename(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(files_module.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(files_module.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    files_module.atomic_write(tmp_path / "f.bin", lambda fh: fh.write(b"data"))
    assert events[:2] == ["fsync", "rename"] and (tmp_path / "f.bin").read_bytes() == b"data"


def test_disk_full_is_one_line_and_keeps_the_index(index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    before = IndexStore.open(index).known_hashes()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store = IndexStore.open_for_writing(index, MODEL)
    monkeypatch.setattr(segments_module.os, "pwritev", full)
    with pytest.raises(IndexStoreError, match=r"^Disk full while writing .*everything committed before is kept"):
        store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])
    monkeypatch.undo()

    def lance_full(*args: object, **kwargs: object) -> None:
        raise OSError("LanceError(IO): Generic LocalFileSystem error: No space left on device (os error 28)")

    monkeypatch.setattr(type(store.pages.table()), "add", lance_full)
    with pytest.raises(IndexStoreError, match=r"^Disk full while writing"):
        store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])
    monkeypatch.undo()
    monkeypatch.setattr(log_module, "os", SimpleNamespace(**{**vars(os), "fdatasync": full}))
    with pytest.raises(IndexStoreError, match=r"^Disk full while writing"):
        store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])
    monkeypatch.undo()
    store.add_document(doc(8), "/docs/8.pdf", [np.ones((3, DIM), dtype=np.float32)])  # space is back
    store.close()
    assert IndexStore.open(index).known_hashes() == before | {doc(8)}
    assert IndexStore.open(index).pages.doc_hashes() == before | {doc(7), doc(8)}  # 7: rows, no record
    IndexStore.open_for_writing(index, MODEL).close()
    assert IndexStore.open(index).pages.doc_hashes() == before | {doc(8)}  # the uncommitted rows cleared


def test_permission_denied_never_says_damaged(index: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(self: Path, *args: object, **kwargs: object) -> str:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(IndexStoreError) as info:
        IndexStore.open(index)
    text = str(info.value)
    assert "Permission denied" in text and "damaged" not in text and "new --index" not in text


def test_index_path_that_is_a_file(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(IndexStoreError, match="is a file, not a folder"):
        IndexStore.open_for_writing(tmp_path / "file", MODEL)


def test_a_current_catalog_file_spares_lancedb(index: Path) -> None:
    code = ("import sys; from pathlib import Path; from ragged.index.store import IndexStore;"
            f"c = IndexStore.open(Path({str(index)!r})).catalog(); print(len(c.pages), 'lancedb' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["6", "False"]


def test_a_stale_format_2_catalog_file_is_not_trusted(tmp_path: Path) -> None:
    index = tmp_path / "old"
    build_format_2(index, {doc(d): (f"/docs/{d}.pdf", [np.ones((4, DIM))]) for d in (1, 2, 3)})
    data = json.loads((index / "catalog.json").read_text())
    data["documents"] = data["documents"][:1]
    (index / "catalog.json").write_text(json.dumps({**data, "version": data["version"] - 1}))
    assert len(IndexStore.open(index).catalog().documents) == 3  # read from LanceDB instead
    assert len(json.loads((index / "catalog.json").read_text())["documents"]) == 3  # and rewritten


def test_leftovers_of_killed_runs_are_cleared_by_the_next_writer(index: Path) -> None:
    path = segment_file(index)
    orphan = index / "segments" / "00000009.seg"
    orphan.write_bytes(b"x" * 100)
    temporary = index / ".ragged-index.json-abc123"
    temporary.write_text("half")
    size = path.stat().st_size
    with path.open("ab") as fh:
        fh.write(b"a block that never committed")
    IndexStore.open_for_writing(index, MODEL).close()
    assert not orphan.exists() and not temporary.exists()
    store = IndexStore.open_for_writing(index, MODEL)
    store.add_document(doc(4), "/docs/4.pdf", [np.ones((3, DIM), dtype=np.float32)])
    store.close()
    assert IndexStore.open(index).catalog().extents[doc(4)][0].offset == size  # the torn tail was cut off
    assert len(docs_of(index)) == 4
