"""Damaged, hostile and shared indexes: repair, one-line errors, no escapes."""

from __future__ import annotations

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ragged.errors import IndexStoreError
from ragged.gpu import DeviceManager
from ragged.gpu.runtime import Runtime
from ragged.index import files as files_module
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore

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
    return MaxSimSearcher(IndexStore.open(folder), DeviceManager().cpu(), Runtime(DeviceManager())).score_all(query)


@pytest.fixture
def index(tmp_path: Path) -> Path:
    build(tmp_path / "index")
    return tmp_path / "index"


@pytest.mark.parametrize("damage", ["missing", "empty", "truncated", "wrong width", "not npy"])
def test_bad_segments_are_rebuilt_from_lancedb(index: Path, damage: str) -> None:
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


def test_deleted_segments_folder_is_recreated(index: Path) -> None:
    expected = scores(index)
    for f in (index / "segments").iterdir():
        f.unlink()
    (index / "segments").rmdir()
    np.testing.assert_allclose(scores(index), expected)
    assert len(list((index / "segments").glob("*.npy"))) == 3


def test_lancedb_data_files_deleted(index: Path) -> None:
    for data in (index / "lancedb" / "pages.lance" / "data").iterdir():
        data.unlink()
    (index / "catalog.json").unlink()  # so the rows must be read
    with pytest.raises(IndexStoreError, match=r"is damaged: reading the page list failed .*new --index"):
        IndexStore.open(index).catalog()


def test_table_folder_deleted(index: Path) -> None:
    import shutil

    shutil.rmtree(index / "lancedb")
    with pytest.raises(IndexStoreError, match=r"is damaged: its page table .* is missing"):
        IndexStore.open(index).catalog()


def test_a_reader_during_the_first_commit_sees_an_empty_index(tmp_path: Path) -> None:
    """While the first document's table is being created (its folder there,
    no version yet), a reader (a search, the server) sees nothing, not damage."""
    import shutil

    index = tmp_path / "index"
    build(index, docs=1)
    shutil.rmtree(index / "lancedb" / "pages.lance" / "_versions")  # the state just before LanceDB's first manifest
    (index / "catalog.json").unlink()  # written only after a commit
    reader = IndexStore.open(index)
    assert reader.catalog().pages == [] and reader.keyword("anything", 5) == []
    assert scores(index).shape == (0, 1)
    writer = IndexStore.open_for_writing(index, MODEL)  # the next writer creates the table over the leftovers
    writer.add_document(doc(9), "/docs/9.pdf", [np.ones((4, DIM), dtype=np.float32)])
    writer.close()
    assert [p.doc_hash for p in IndexStore.open(index).catalog().pages] == [doc(9)]


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


def test_document_ids_never_become_paths(index: Path, tmp_path: Path) -> None:
    """A doc_hash read from the table is checked before it names a file."""
    import pyarrow as pa

    from ragged.index.store import _lancedb, _schema

    table = _lancedb().connect(str(index / "lancedb")).open_table("pages")
    outside = tmp_path / "x.npy"
    np.save(outside, np.ones((5, DIM), dtype=np.float16))
    vectors = pa.array([[[1.0] * DIM] * 5], type=pa.list_(pa.list_(pa.float16(), DIM)))
    table.add(pa.table({"doc_hash": ["../../x"], "path": ["/evil.pdf"], "page": pa.array([1], pa.int32()),
                        "n_vectors": pa.array([5], pa.int32()), "model": [MODEL], "vectors": vectors,
                        "grid_start": pa.array([None], pa.int32()), "grid_rows": pa.array([None], pa.int32()),
                        "grid_cols": pa.array([None], pa.int32()), "text": pa.array([None], pa.string()),
                        "text_vectors": pa.array([None], pa.list_(pa.float32()))},
                       schema=_schema(DIM)))
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
    store = IndexStore.open_for_writing(index, MODEL)
    with pytest.raises(IndexStoreError, match="is a symbolic link"):
        store.add_document(doc(9), "/docs/9.pdf", [np.ones((3, DIM), dtype=np.float32)])
    store.close()
    assert not (target / "segments" / f"{doc(9)}.npy").exists()


def test_files_follow_the_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(files_module, "UMASK", 0o002)
    folder = tmp_path / "shared"
    build(folder, docs=1)
    for name in ("ragged-index.json", "catalog.json", f"segments/{doc(1)}.npy"):
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
    monkeypatch.setattr(np, "save", full)
    with pytest.raises(IndexStoreError, match=r"^Disk full while writing .*everything committed before is kept"):
        store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])
    monkeypatch.undo()

    def lance_full(*args: object, **kwargs: object) -> None:
        raise OSError("LanceError(IO): Generic LocalFileSystem error: No space left on device (os error 28)")

    monkeypatch.setattr(type(store._table_or_none()), "add", lance_full)
    with pytest.raises(IndexStoreError, match=r"^Disk full while writing"):
        store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])
    monkeypatch.undo()
    store.add_document(doc(7), "/docs/7.pdf", [np.ones((3, DIM), dtype=np.float32)])  # space is back
    store.close()
    assert IndexStore.open(index).known_hashes() == before | {doc(7)}


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


def test_a_stale_catalog_file_is_not_trusted(index: Path) -> None:
    data = json.loads((index / "catalog.json").read_text())
    data["documents"] = data["documents"][:1]
    (index / "catalog.json").write_text(json.dumps({**data, "version": data["version"] - 1}))
    assert len(IndexStore.open(index).catalog().documents) == 3  # read from LanceDB instead
    assert len(json.loads((index / "catalog.json").read_text())["documents"]) == 3  # and rewritten


def test_leftovers_of_killed_runs_are_cleared_by_the_next_writer(index: Path) -> None:
    orphan = index / "segments" / f"{doc(42)}.npy"
    np.save(orphan, np.ones((2, DIM), dtype=np.float16))
    temporary = index / ".catalog.json-abc123"
    temporary.write_text("half")
    IndexStore.open_for_writing(index, MODEL).close()
    assert not orphan.exists() and not temporary.exists()
    assert len(list((index / "segments").glob("*.npy"))) == 3
