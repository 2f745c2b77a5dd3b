"""The on-disk index: LanceDB for pages, plus a search layout for vectors.

LanceDB holds one row per page (document hash and path, page number, model,
the page's multi-vector in fp16) and is the source of truth. Each document
is committed with a single ``add``, which LanceDB makes atomic: a document
is either wholly in the index or not at all, whenever the process dies.

Search needs the vectors fast, and reading them out of LanceDB costs about
as much as LanceDB's own search (see docs/benchmarks.md). So each document's
vectors are also written, before its commit, as one memory-mappable fp16
``.npy`` file. Search starts from LanceDB's rows, so a file left by a run
killed before its commit is never read, and a missing file is rebuilt from
LanceDB.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from ragged.errors import IndexStoreError, ModelMismatchError

FORMAT = 1
TABLE = "pages"
META = "ragged-index.json"


@dataclass(frozen=True)
class IndexMeta:
    """What built the index."""

    model: str
    dim: int
    format: int = FORMAT


@dataclass(frozen=True)
class PageRecord:
    """One stored page, without its vectors."""

    doc_hash: str
    path: str
    page: int  # 1-based
    n_vectors: int


@dataclass(frozen=True)
class Catalog:
    """Every stored page in search order: grouped by document, page order."""

    pages: list[PageRecord]
    documents: list[str]  # document hashes, in the order their pages appear

    @property
    def total_vectors(self) -> int:
        """Vectors over all pages."""
        return sum(p.n_vectors for p in self.pages)


def _lancedb() -> Any:
    os.environ.setdefault("LANCE_LOG", "error")  # keep Rust-side warnings off the user's terminal
    import lancedb

    return lancedb


def _schema(dim: int) -> Any:
    import pyarrow as pa

    return pa.schema([
        pa.field("doc_hash", pa.string()),
        pa.field("path", pa.string()),
        pa.field("page", pa.int32()),
        pa.field("n_vectors", pa.int32()),
        pa.field("model", pa.string()),
        pa.field("vectors", pa.list_(pa.list_(pa.float16(), dim))),
    ])


class IndexStore:
    """An index folder. Open with :meth:`open` (read) or :meth:`open_for_writing`."""

    def __init__(self, folder: Path, meta: IndexMeta | None, writer_model: str | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.writer_model = writer_model
        self._db: Any = None
        self._table: Any = None
        self._lock_fh: Any = None

    # -- opening ----------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> IndexStore:
        """Open an existing index for search."""
        meta = cls._read_meta(folder)
        if meta is None:
            raise IndexStoreError(f"No index at {folder}: run 'ragged ingest' first, or pass --index.")
        return cls(folder, meta)

    @classmethod
    def read_meta(cls, folder: Path) -> IndexMeta | None:
        """The index's metadata, or None when there is no index there."""
        return cls._read_meta(folder)

    @classmethod
    def open_for_writing(cls, folder: Path, model: str) -> IndexStore:
        """Open (or create) an index to add pages made by ``model``.

        Refuses an index built by another model, an unwritable folder, and a
        second writer at the same time.
        """
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
                pass
        except OSError as exc:
            raise IndexStoreError(
                f"Index folder {folder} is not writable ({exc.strerror}); choose another with --index."
            ) from exc
        meta = cls._read_meta(folder)
        if meta is not None and meta.model != model:
            raise ModelMismatchError(
                f"The index at {folder} was built with {meta.model!r}, not {model!r}; "
                f"use --model {meta.model} or another --index folder."
            )
        store = cls(folder, meta, writer_model=model)
        store._lock()
        return store

    @staticmethod
    def _read_meta(folder: Path) -> IndexMeta | None:
        path = folder / META
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            return IndexMeta(model=str(data["model"]), dim=int(data["dim"]), format=int(data["format"]))
        except (OSError, ValueError, KeyError) as exc:
            raise IndexStoreError(f"{path} is damaged ({exc}); move the index folder away and ingest again.") from exc

    def _lock(self) -> None:
        self._lock_fh = (self.folder / ".lock").open("a")
        try:
            fcntl.flock(self._lock_fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._lock_fh.close()
            self._lock_fh = None
            raise IndexStoreError(
                f"Another 'ragged ingest' is writing to {self.folder}; wait for it to finish."
            ) from None

    def close(self) -> None:
        """Release the writer's lock."""
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh, fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- LanceDB ----------------------------------------------------------

    def _table_or_none(self) -> Any:
        if self._table is None:
            if self._db is None:
                self._db = _lancedb().connect(str(self.folder / "lancedb"))
            try:
                self._table = self._db.open_table(TABLE)
            except (ValueError, FileNotFoundError):
                return None
        return self._table

    def known_hashes(self) -> set[str]:
        """Hashes of the documents already stored."""
        table = self._table_or_none()
        if table is None:
            return set()
        rows = table.search().select(["doc_hash"]).limit(None).to_arrow()
        return set(rows.column("doc_hash").to_pylist())

    def add_document(self, doc_hash: str, path: str, pages: list[np.ndarray]) -> None:
        """Store every page of one document in one atomic commit.

        ``pages`` are (tokens, dim) arrays in page order.
        """
        import pyarrow as pa

        if not pages:
            return
        dim = int(pages[0].shape[1])
        if self.writer_model is None:
            raise IndexStoreError("This index was opened for reading; open it with open_for_writing.")
        if self.meta is None:
            self.meta = IndexMeta(model=self.writer_model, dim=dim)
        elif dim != self.meta.dim:
            raise IndexStoreError(f"Vectors of size {dim} do not match the index's {self.meta.dim}.")
        halves = [np.asarray(p, dtype=np.float16) for p in pages]  # each (tokens, dim)
        stacked = np.ascontiguousarray(np.concatenate(halves, axis=0))  # (all tokens, dim)
        self._write_segment(doc_hash, stacked)
        vector_type = pa.list_(pa.list_(pa.float16(), dim))
        flat = pa.array(stacked.reshape(-1), type=pa.float16())
        inner = pa.FixedSizeListArray.from_arrays(flat, dim)  # (all tokens, dim)
        offsets = pa.array(np.concatenate([[0], np.cumsum([h.shape[0] for h in halves])]).astype(np.int32))
        vectors = pa.ListArray.from_arrays(offsets, inner, type=vector_type)
        rows = pa.table({
            "doc_hash": [doc_hash] * len(pages),
            "path": [path] * len(pages),
            "page": pa.array(range(1, len(pages) + 1), type=pa.int32()),
            "n_vectors": pa.array([h.shape[0] for h in halves], type=pa.int32()),
            "model": [self.meta.model] * len(pages),
            "vectors": vectors,
        }, schema=_schema(dim))
        self._write_meta()
        table = self._table_or_none()
        if table is None:
            self._table = self._db.create_table(TABLE, data=rows, schema=_schema(dim))
        else:
            table.add(rows)

    def _write_meta(self) -> None:
        assert self.meta is not None
        path = self.folder / META
        if path.is_file():
            return
        data = json.dumps({"model": self.meta.model, "dim": self.meta.dim, "format": self.meta.format}).encode()
        self._atomic_write(path, lambda fh: fh.write(data))

    @staticmethod
    def _atomic_write(path: Path, write: Callable[[BinaryIO], object]) -> None:
        """Write ``path`` through a temporary file renamed into place, so a
        killed process never leaves it half-written."""
        path.parent.mkdir(exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}-")
        try:
            with os.fdopen(fd, "wb") as fh:
                write(fh)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    # -- search layout ----------------------------------------------------

    def _segment_path(self, doc_hash: str) -> Path:
        return self.folder / "segments" / f"{doc_hash}.npy"

    def _write_segment(self, doc_hash: str, vectors: np.ndarray) -> None:
        self._atomic_write(self._segment_path(doc_hash), lambda fh: np.save(fh, vectors))

    def catalog(self) -> Catalog:
        """Every stored page, grouped by document in page order."""
        table = self._table_or_none()
        if table is None:
            return Catalog([], [])
        rows = table.search().select(["doc_hash", "path", "page", "n_vectors"]).limit(None).to_arrow()
        records = [
            PageRecord(h, p, int(n), int(v))
            for h, p, n, v in zip(
                rows.column("doc_hash").to_pylist(), rows.column("path").to_pylist(),
                rows.column("page").to_pylist(), rows.column("n_vectors").to_pylist(), strict=True,
            )
        ]
        order: dict[str, int] = {}
        for record in records:
            order.setdefault(record.doc_hash, len(order))
        keys = [(order[r.doc_hash], r.page) for r in records]
        if any(a > b for a, b in pairwise(keys)):  # rows usually arrive in commit order
            records = [r for _, r in sorted(zip(keys, records, strict=True), key=lambda kr: kr[0])]
        return Catalog(records, list(order))

    def segment(self, doc_hash: str, expected_vectors: int) -> np.ndarray:
        """A document's vectors, (tokens, dim) fp16, memory-mapped; rebuilt
        from LanceDB when the file is missing or does not match."""
        path = self._segment_path(doc_hash)
        try:
            vectors = np.load(path, mmap_mode="c")  # copy-on-write: writable views, file untouched
            if vectors.shape[0] == expected_vectors and vectors.dtype == np.float16:
                return vectors  # type: ignore[no-any-return]
        except (OSError, ValueError):
            pass
        vectors = self._vectors_from_lancedb(doc_hash)
        if vectors.shape[0] != expected_vectors:
            raise IndexStoreError(f"Index damaged: document {doc_hash[:12]} has inconsistent vectors; re-ingest it.")
        if self._lock_fh is not None or os.access(path.parent, os.W_OK):
            self._write_segment(doc_hash, vectors)
        return vectors

    def _vectors_from_lancedb(self, doc_hash: str) -> np.ndarray:
        table = self._table_or_none()
        if not all(c in "0123456789abcdef" for c in doc_hash):
            raise IndexStoreError(f"Bad document id {doc_hash!r}.")
        rows = (table.search().where(f"doc_hash = '{doc_hash}'").select(["page", "vectors"])
                .limit(None).to_arrow()).sort_by("page")
        column = rows.column("vectors").combine_chunks()
        flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
        assert self.meta is not None
        return np.asarray(flat, dtype=np.float16).reshape(-1, self.meta.dim)
