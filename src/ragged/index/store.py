"""The on-disk index: LanceDB for pages, plus a search layout for vectors.

LanceDB holds one row per page (document hash and absolute path, page
number, model, the page's multi-vector in fp16, its patch grid and text)
and is the source of truth. Every change is one LanceDB commit, which is
atomic: a document is added whole, replaced whole (a changed file's old
pages go in the same commit as its new ones, so a reader sees the old or
the new version, never both or neither), moved, or removed.

Search needs the vectors fast, and reading them out of LanceDB costs about
as much as LanceDB's own search (see docs/benchmarks.md). So each
document's vectors are also written, before its commit, as one
memory-mappable fp16 ``.npy`` segment named by the document's content
hash. Search starts from the committed rows (through the catalog file), so
a segment left by a run killed before its commit is never read, and a
missing or damaged segment is rebuilt from LanceDB.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
from loguru import logger

from ragged.embeddings.names import is_storable, stored_name
from ragged.errors import IndexStoreError, ModelMismatchError
from ragged.index.catalog import (
    CATALOG,
    Catalog,
    DocumentRecord,
    PageRecord,
    PatchGrid,
    read_catalog_file,
    table_version,
    write_catalog_file,
)
from ragged.index.files import (
    UMASK,
    atomic_write,
    check_doc_id,
    ensure_folder,
    is_disk_full,
    refuse_link,
    storage_error,
)
from ragged.index.meta import FORMAT, IndexMeta, read_meta, write_meta

TABLE = "pages"
_FORMAT_2_COLUMNS = ("grid_start", "grid_rows", "grid_cols", "text", "text_vectors")


@dataclass(frozen=True)
class StoredPage:
    """One page to store: its vectors, where its patches are, its text (None:
    not read; "": it has none) and its passages' text vectors ((passages,
    text_dim) float32; None: not embedded)."""

    vectors: np.ndarray  # (tokens, dim)
    grid: PatchGrid | None = None
    text: str | None = None
    text_vectors: np.ndarray | None = None


@dataclass(frozen=True)
class KeywordHit:
    """A page found by full-text (BM25) search."""

    doc_hash: str
    page: int
    score: float
    text: str = ""  # the page's text, to tell how much of the query it holds


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
        pa.field("grid_start", pa.int32()),
        pa.field("grid_rows", pa.int32()),
        pa.field("grid_cols", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("text_vectors", pa.list_(pa.float32())),  # the page's passage vectors, flattened
    ])


def sql_string(text: str) -> str:
    """``text`` as an SQL string literal for LanceDB filters."""
    return "'" + text.replace("'", "''") + "'"


def absolute(path: str | Path) -> str:
    """The absolute, normalised form of a document path (links resolved)."""
    return str(Path(path).expanduser().resolve())


class IndexStore:
    """An index folder. Open with :meth:`open` (read) or :meth:`open_for_writing`."""

    def __init__(self, folder: Path, meta: IndexMeta | None, writer_model: str | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.writer_model = writer_model
        self._db: Any = None
        self._table: Any = None
        self._lock_fd: int | None = None
        self._catalog: Catalog | None = None  # the writer's copy, kept current at each commit
        self._pending_text: tuple[str, int] | None = None  # a text model named before the first document

    # -- opening ----------------------------------------------------------

    @classmethod
    def open(cls, folder: Path) -> IndexStore:
        """Open an existing index for search."""
        folder = folder.expanduser()
        if folder.is_file():
            raise IndexStoreError(f"{folder} is a file, not an index folder; pass the folder 'ragged ingest' "
                                  "wrote with --index.")
        meta = read_meta(folder)
        if meta is None:
            raise IndexStoreError(f"No index at {folder}: run 'ragged ingest' first, or pass --index.")
        return cls(folder, meta)

    @classmethod
    def read_meta(cls, folder: Path) -> IndexMeta | None:
        """The index's metadata, or None when there is no index there."""
        return read_meta(folder.expanduser())

    @classmethod
    def open_for_writing(cls, folder: Path, model: str) -> IndexStore:
        """Open (or create) an index to add pages made by ``model``.

        Refuses an index built by another model, an unwritable folder, and a
        second writer at the same time; upgrades an older format in place."""
        folder = folder.expanduser()
        if folder.exists() and not folder.is_dir():
            raise IndexStoreError(f"{folder} is a file, not a folder; choose another --index.")
        ensure_folder(folder)
        if not os.access(folder, os.W_OK):
            raise IndexStoreError(f"Index folder {folder} is not writable (permission denied); "
                                  "choose another with --index.")
        meta = read_meta(folder)
        model = stored_name(model)
        if not is_storable(model):
            raise IndexStoreError(f"{model!r} is not a model name an index can record (a preset, org/name or "
                                  "a folder).")
        if meta is not None and meta.model != model:
            raise ModelMismatchError(
                f"The index at {folder} was built with {meta.model!r}, not {model!r}; "
                f"use --model {meta.model} or another --index folder."
            )
        store = cls(folder, meta, writer_model=model)
        store._lock()
        try:
            store._prepare_for_writing()
        except BaseException:
            store.close()
            raise
        return store

    def _lock(self) -> None:
        path = refuse_link(self.folder / ".lock")
        try:
            self._lock_fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666 & ~UMASK)
        except OSError as exc:
            raise storage_error(exc, path) from exc
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise IndexStoreError(
                f"Another 'ragged ingest' is writing to {self.folder}; wait for it to finish."
            ) from None

    def close(self) -> None:
        """Release the writer's lock."""
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> IndexStore:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @property
    def writable(self) -> bool:
        """True while this store holds the writer's lock."""
        return self._lock_fd is not None

    # -- LanceDB ----------------------------------------------------------

    @property
    def table_folder(self) -> Path:
        """Where LanceDB keeps the pages table."""
        return self.folder / "lancedb" / f"{TABLE}.lance"

    @contextmanager
    def _guard(self, action: str) -> Iterator[None]:
        """Translate LanceDB's and the OS's failures into one clear line."""
        try:
            yield
        except IndexStoreError:
            raise
        except Exception as exc:
            if is_disk_full(exc) or isinstance(exc, PermissionError):
                raise storage_error(exc, self.folder) from exc
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise IndexStoreError(
                f"The index at {self.folder} is damaged: {action} failed ({first}). Restore it from a backup, "
                "or ingest into a new --index folder."
            ) from exc

    def _table_committed(self) -> bool:
        """True once the table's first commit is on disk. A table folder with no
        version yet is being created by a writer right now: nothing to read."""
        if not self.table_folder.exists():
            return False
        return table_version(self.table_folder) is not None or self._table_missing_but_used()

    def _table_or_none(self) -> Any:
        if self._table is None:
            if not self._table_committed():
                return None
            refuse_link(self.folder / "lancedb")
            with self._guard("opening the pages table"):
                if self._db is None:
                    self._db = _lancedb().connect(str(self.folder / "lancedb"))
                self._table = self._db.open_table(TABLE)
        return self._table

    def _table_missing_but_used(self) -> bool:
        """The catalog file is written only after a commit: with it, a missing table was lost."""
        return (self.folder / CATALOG).is_file()

    def _read_catalog(self) -> Catalog:
        if not self.table_folder.exists():
            if self.meta is not None and self._table_missing_but_used():
                raise IndexStoreError(
                    f"The index at {self.folder} is damaged: its page table ({self.table_folder}) is missing. "
                    "Restore it from a backup, or ingest into a new --index folder."
                )
            return Catalog([], [])
        if not self._table_committed():
            return Catalog([], [])  # the first commit is under way
        cached = read_catalog_file(self.folder, table_version(self.table_folder))
        if cached is not None:
            return cached  # current: LanceDB is not even imported
        table = self._table_or_none()
        names = set(table.schema.names)
        columns = ["doc_hash", "path", "page", "n_vectors"] + [c for c in ("grid_start", "grid_rows", "grid_cols")
                                                               if c in names]
        with self._guard("reading the page list"):
            rows = table.search().select(columns).limit(None).to_arrow().to_pydict()
        grids: list[PatchGrid | None] = [None] * len(rows["doc_hash"])
        if "grid_start" in rows:
            grids = [PatchGrid(s, r, c) if s is not None and r and c else None
                     for s, r, c in zip(rows["grid_start"], rows["grid_rows"], rows["grid_cols"], strict=True)]
        records = [PageRecord(str(h), str(p), int(n), int(v), g) for h, p, n, v, g in zip(
            rows["doc_hash"], rows["path"], rows["page"], rows["n_vectors"], grids, strict=True)]
        catalog = Catalog.from_pages(records)
        if self.writable or os.access(self.folder, os.W_OK):
            with suppress(IndexStoreError):  # a reader that cannot write reads LanceDB next time too
                write_catalog_file(self.folder, catalog, int(table.version))
        return catalog

    def catalog(self) -> Catalog:
        """Every stored page, grouped by document in page order."""
        if self._catalog is not None:
            return self._catalog
        catalog = self._read_catalog()
        if self.writable:
            self._catalog = catalog
        return catalog

    def documents(self) -> list[DocumentRecord]:
        """Every stored document, in search order."""
        return self.catalog().document_records()

    def known_hashes(self) -> set[str]:
        """Content hashes of the documents stored."""
        return set(self.catalog().documents)

    # -- writing ----------------------------------------------------------

    def _require_writer(self) -> None:
        if self.writer_model is None or not self.writable:
            raise IndexStoreError("This index was opened for reading; open it with open_for_writing.")

    def _prepare_for_writing(self) -> None:
        """Upgrade an older format, and clear what killed runs left behind."""
        if self.meta is not None and self.meta.format < FORMAT:
            self._upgrade()
        self._remove_leftovers()

    def _upgrade(self) -> None:
        assert self.meta is not None
        table = self._table_or_none()
        if table is not None:
            schema = _schema(self.meta.dim)
            missing = [schema.field(name) for name in _FORMAT_2_COLUMNS if name not in table.schema.names]
            with self._guard("upgrading the pages table"):
                for field in missing:
                    table.add_columns(field)
                for record in self._read_catalog().document_records():
                    path = Path(record.path)
                    if not path.is_absolute() and path.is_file():  # format 1 kept paths as typed
                        table.update(where=f"doc_hash = {sql_string(record.doc_hash)}",
                                     values={"path": absolute(path)})
        self.meta = self.meta.upgraded()
        write_meta(self.folder, self.meta)

    def _remove_leftovers(self) -> None:
        """Temporary files of interrupted writes, and segments of documents
        never committed (only a writer, holding the lock, may do this)."""
        segments = self.folder / "segments"
        known = self.known_hashes() if self.meta is not None else set()
        for folder in (self.folder, segments):
            if not folder.is_dir() or folder.is_symlink():
                continue
            for entry in folder.iterdir():
                temporary = entry.name.startswith(".") and "-" in entry.name  # atomic_write's ".name-XXXX"
                orphan = folder == segments and entry.suffix == ".npy" and entry.stem not in known
                if (temporary or orphan) and entry.is_file() and not entry.is_symlink():
                    entry.unlink(missing_ok=True)

    def add_document(self, doc_hash: str, path: str, pages: Sequence[StoredPage | np.ndarray]) -> None:
        """Store every page of one document in one atomic commit, replacing
        any document stored at ``path`` in the same commit."""
        if not pages:
            return
        check_doc_id(doc_hash)
        catalog = self.catalog()
        path = absolute(path)
        items = [p if isinstance(p, StoredPage) else StoredPage(np.asarray(p)) for p in pages]
        dim = int(items[0].vectors.shape[1])
        self._require_writer()
        assert self.writer_model is not None
        if self.meta is None:
            text_model, text_dim = self._pending_text or (None, None)
            self.meta = IndexMeta(model=self.writer_model, dim=dim, text_model=text_model, text_dim=text_dim)
        elif dim != self.meta.dim:
            raise IndexStoreError(f"Vectors of size {dim} do not match the index's {self.meta.dim}.")
        halves = [np.asarray(p.vectors, dtype=np.float16) for p in items]  # each (tokens, dim)
        stacked = np.ascontiguousarray(np.concatenate(halves, axis=0))  # (all tokens, dim)
        self._write_segment(doc_hash, stacked)
        rows = self._rows(doc_hash, path, items, halves, stacked, dim)
        if read_meta(self.folder) is None:
            write_meta(self.folder, self.meta)
        replaced = [d for d in catalog.document_records() if d.path == path and d.doc_hash != doc_hash]
        table = self._table_or_none()
        first = table is None
        with self._guard("adding a document"):
            if table is None:
                self._db = self._db or _lancedb().connect(str(self.folder / "lancedb"))
                self._table = self._db.create_table(TABLE, data=rows, schema=_schema(dim))
            elif replaced:
                (table.merge_insert(["doc_hash", "page"]).when_not_matched_insert_all()
                 .when_not_matched_by_source_delete(f"path = {sql_string(path)}").execute(rows))
            else:
                table.add(rows)
        gone = {d.doc_hash for d in replaced}
        records = [PageRecord(doc_hash, path, n, h.shape[0], p.grid) for n, (h, p) in enumerate(zip(halves, items,
                                                                                                  strict=True), 1)]
        self._committed(Catalog([*(p for p in catalog.pages if p.doc_hash not in gone), *records],
                                [*(d for d in catalog.documents if d not in gone), doc_hash]))
        self._drop_segments(gone)
        if first:  # at once: keyword search works whatever stops the run later
            try:
                self._index_text(self._table)
                self._committed(self.catalog())  # the index is a new table version: the catalog follows it
            except IndexStoreError as exc:  # the pages are committed; finish() tries again
                logger.warning("The full-text index could not be made yet ({}); keyword search waits for it.", exc)

    def _rows(self, doc_hash: str, path: str, items: list[StoredPage], halves: list[np.ndarray],
              stacked: np.ndarray, dim: int) -> Any:
        import pyarrow as pa

        assert self.meta is not None
        vector_type = pa.list_(pa.list_(pa.float16(), dim))
        flat = pa.array(stacked.reshape(-1), type=pa.float16())
        inner = pa.FixedSizeListArray.from_arrays(flat, dim)  # (all tokens, dim)
        offsets = pa.array(np.concatenate([[0], np.cumsum([h.shape[0] for h in halves])]).astype(np.int32))
        return pa.table({
            "doc_hash": [doc_hash] * len(items),
            "path": [path] * len(items),
            "page": pa.array(range(1, len(items) + 1), type=pa.int32()),
            "n_vectors": pa.array([h.shape[0] for h in halves], type=pa.int32()),
            "model": [self.meta.model] * len(items),
            "vectors": pa.ListArray.from_arrays(offsets, inner, type=vector_type),
            "grid_start": pa.array([p.grid.start if p.grid else None for p in items], type=pa.int32()),
            "grid_rows": pa.array([p.grid.rows if p.grid else None for p in items], type=pa.int32()),
            "grid_cols": pa.array([p.grid.cols if p.grid else None for p in items], type=pa.int32()),
            "text": pa.array([p.text for p in items], type=pa.string()),
            "text_vectors": _flat_vectors([p.text_vectors for p in items]),
        }, schema=_schema(dim))

    def set_text_model(self, name: str, dim: int) -> None:
        """Record the text model (the first time text vectors are stored)."""
        self._require_writer()
        if self.meta is None:  # a new index: recorded with its first document
            self._pending_text = (name, dim)
            return
        if self.meta.text_model not in (None, name):
            raise ModelMismatchError(
                f"The index at {self.folder} holds text vectors of {self.meta.text_model!r}, not {name!r}; "
                f"use --text-model {self.meta.text_model} or another --index folder."
            )
        if self.meta.text_model is None:
            self.meta = replace(self.meta, text_model=name, text_dim=dim)
            write_meta(self.folder, self.meta)

    def set_text(self, doc_hash: str, pages: Sequence[tuple[str, np.ndarray]]) -> None:
        """Give a stored document its text side (text and passage vectors of
        each page, in page order) in one commit; its image vectors stay."""
        import pyarrow as pa

        self._require_writer()
        check_doc_id(doc_hash)
        rows = pa.table({
            "doc_hash": [doc_hash] * len(pages),
            "page": pa.array(range(1, len(pages) + 1), type=pa.int32()),
            "text": pa.array([text for text, _ in pages], type=pa.string()),
            "text_vectors": _flat_vectors([vectors for _, vectors in pages]),
        })
        table = self._table_or_none()
        with self._guard("storing page text"):
            table.merge_insert(["doc_hash", "page"]).when_matched_update_all().execute(rows)
        self._committed(self.catalog())

    def documents_without_text(self) -> set[str]:
        """Stored documents without passage vectors: built before the text side,
        or ingested with the text model off (a page with no text has an empty
        list, not none)."""
        table = self._table_or_none()
        if table is None:
            return set()
        if "text_vectors" not in table.schema.names:
            return set(self.catalog().documents)
        with self._guard("reading page text"):
            rows = (table.search().where("text IS NULL OR text_vectors IS NULL").select(["doc_hash"])
                    .limit(None).to_arrow())
        return set(rows.column("doc_hash").to_pylist())

    def needs_text_index(self) -> bool:
        """True when pages have text but the full-text index is missing (a first
        run that was interrupted before it was built)."""
        table = self._table_or_none()
        return table is not None and "text" in table.schema.names and not self._has_fts(table)

    def text_vectors(self) -> tuple[np.ndarray, np.ndarray]:
        """Every stored passage vector and its page's catalog position:
        ((passages,) int64, (passages, text_dim) float32)."""
        table = self._table_or_none()
        dim = self.meta.text_dim if self.meta is not None and self.meta.text_dim else 0
        if table is None or not dim or "text_vectors" not in table.schema.names:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        position = {(p.doc_hash, p.page): n for n, p in enumerate(self.catalog().pages)}
        with self._guard("reading text vectors"):
            rows = table.search().where("text_vectors IS NOT NULL").select(
                ["doc_hash", "page", "text_vectors"]).limit(None).to_arrow()
        owners: list[np.ndarray] = []
        blocks: list[np.ndarray] = []
        lists = rows.column("text_vectors").combine_chunks()
        for doc_hash, page, flat in zip(rows.column("doc_hash").to_pylist(), rows.column("page").to_pylist(),
                                        lists, strict=True):
            where = position.get((doc_hash, page))
            values = np.asarray(flat.values.to_numpy(zero_copy_only=False), dtype=np.float32).reshape(-1, dim)
            if where is None or not len(values):
                continue
            owners.append(np.full(len(values), where, dtype=np.int64))
            blocks.append(values)
        if not blocks:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        return np.concatenate(owners), np.concatenate(blocks)

    def keyword(self, query: str, limit: int) -> list[KeywordHit]:
        """The best pages for ``query`` by LanceDB's full-text search (BM25)."""
        table = self._table_or_none()
        if table is None or "text" not in table.schema.names or not self._has_fts(table):
            return []
        with self._guard("searching page text"):
            rows = (table.search(query, query_type="fts").select(["doc_hash", "page", "_score", "text"])
                    .limit(limit).to_arrow())
        return [KeywordHit(h, int(p), float(s), t or "") for h, p, s, t in zip(
            rows.column("doc_hash").to_pylist(), rows.column("page").to_pylist(), rows.column("_score").to_pylist(),
            rows.column("text").to_pylist(), strict=True)]

    def page_texts(self, limit: int) -> list[tuple[str, int, str]]:
        """(document, page, text) of up to ``limit`` stored pages that have text."""
        table = self._table_or_none()
        if table is None or "text" not in table.schema.names:
            return []
        with self._guard("reading page text"):
            rows = (table.search().where("text IS NOT NULL AND text != ''").select(["doc_hash", "page", "text"])
                    .limit(limit).to_arrow())
        return list(zip(rows.column("doc_hash").to_pylist(), [int(p) for p in rows.column("page").to_pylist()],
                        rows.column("text").to_pylist(), strict=True))

    @staticmethod
    def _has_fts(table: Any) -> bool:
        return any(getattr(i, "index_type", "") == "FTS" for i in table.list_indices())

    def finish(self) -> None:
        """After a run of commits: make sure the full-text index exists and fold
        the new pages into it (LanceDB searches rows not yet indexed too, so
        every commit is searchable at once; this keeps it fast)."""
        self._require_writer()
        table = self._table_or_none()
        if table is None or "text" not in table.schema.names:
            return
        with self._guard("indexing page text"):
            if not self._has_fts(table):
                self._index_text(table)
            else:
                table.optimize()
        self._committed(self.catalog())

    def _index_text(self, table: Any) -> None:
        """Create the full-text index over page text (pages added later are
        searched unindexed until :meth:`finish` folds them in)."""
        from lancedb.index import FTS

        with self._guard("indexing page text"):
            table.create_index("text", config=FTS())

    def move_document(self, doc_hash: str, new_path: str) -> None:
        """Record that document ``doc_hash`` now lives at ``new_path`` (one commit, nothing re-embedded)."""
        self._require_writer()
        check_doc_id(doc_hash)
        new_path = absolute(new_path)
        table = self._table_or_none()
        with self._guard("moving a document"):
            table.update(where=f"doc_hash = {sql_string(doc_hash)}", values={"path": new_path})
        catalog = self.catalog()
        pages = [replace(p, path=new_path) if p.doc_hash == doc_hash else p for p in catalog.pages]
        self._committed(Catalog(pages, catalog.documents))

    def remove_documents(self, doc_hashes: Sequence[str]) -> int:
        """Remove documents (one commit); returns how many pages went."""
        self._require_writer()
        hashes = {check_doc_id(h) for h in doc_hashes}
        catalog = self.catalog()
        hashes &= set(catalog.documents)
        if not hashes:
            return 0
        table = self._table_or_none()
        with self._guard("removing documents"):
            table.delete("doc_hash IN (" + ", ".join(sql_string(h) for h in sorted(hashes)) + ")")
        kept = [p for p in catalog.pages if p.doc_hash not in hashes]
        self._committed(Catalog(kept, [d for d in catalog.documents if d not in hashes]))
        self._drop_segments(hashes)
        return len(catalog.pages) - len(kept)

    def _committed(self, catalog: Catalog) -> None:
        """Keep the catalog (in memory and on disk) current after a commit."""
        self._catalog = catalog
        write_catalog_file(self.folder, catalog, int(self._table.version))

    def _drop_segments(self, hashes: set[str]) -> None:
        for doc_hash in hashes:
            if doc_hash not in set(self.catalog().documents):
                self._segment_path(doc_hash).unlink(missing_ok=True)

    # -- search layout ----------------------------------------------------

    def _segment_path(self, doc_hash: str) -> Path:
        return refuse_link(self.folder / "segments") / f"{check_doc_id(doc_hash)}.npy"

    def _write_segment(self, doc_hash: str, vectors: np.ndarray) -> None:
        atomic_write(self._segment_path(doc_hash), lambda fh: np.save(fh, vectors))

    def segment(self, doc_hash: str, expected_vectors: int) -> np.ndarray:
        """A document's vectors, (tokens, dim) fp16, memory-mapped; rebuilt
        from LanceDB when the file is missing, empty or does not match."""
        path = self._segment_path(doc_hash)
        dim = self.meta.dim if self.meta is not None else None
        try:
            vectors = np.load(refuse_link(path), mmap_mode="c")  # copy-on-write: writable views, file untouched
            if vectors.dtype == np.float16 and vectors.shape == (expected_vectors, dim):
                return vectors  # type: ignore[no-any-return]
        except IndexStoreError:
            raise
        except Exception:  # missing, zero bytes, truncated, not an .npy: rebuilt below
            pass
        vectors = self._vectors_from_lancedb(doc_hash)
        if vectors.shape[0] != expected_vectors:
            raise IndexStoreError(f"Index damaged: document {doc_hash[:12]} has inconsistent vectors; "
                                  "re-ingest it into a new --index.")
        if self.writable or os.access(self.folder, os.W_OK):
            with suppress(IndexStoreError):  # searching still works, only slower next time
                self._write_segment(doc_hash, vectors)
        return vectors

    def _vectors_from_lancedb(self, doc_hash: str) -> np.ndarray:
        table = self._table_or_none()
        if table is None or self.meta is None:
            raise IndexStoreError(f"The index at {self.folder} has no page table; run 'ragged ingest' first.")
        with self._guard("reading a document's vectors"):
            rows = (table.search().where(f"doc_hash = {sql_string(check_doc_id(doc_hash))}")
                    .select(["page", "vectors"]).limit(None).to_arrow()).sort_by("page")
            column = rows.column("vectors").combine_chunks()
            flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
        return np.array(flat, dtype=np.float16).reshape(-1, self.meta.dim)  # a writable copy

    def page_vectors(self, doc_hash: str, page: int) -> np.ndarray:
        """One page's vectors, (tokens, dim) fp16."""
        records = [p for p in self.catalog().pages if p.doc_hash == doc_hash]
        if not 1 <= page <= len(records):
            raise IndexStoreError(f"Document {doc_hash[:12]} has no page {page}.")
        start = sum(p.n_vectors for p in records[: page - 1])
        vectors = self.segment(doc_hash, sum(p.n_vectors for p in records))
        return vectors[start : start + records[page - 1].n_vectors]


def _flat_vectors(per_page: Sequence[np.ndarray | None]) -> Any:
    """Per page, its (passages, dim) vectors flattened (None where not embedded)."""
    import pyarrow as pa

    return pa.array([None if v is None else np.asarray(v, dtype=np.float32).reshape(-1) for v in per_page],
                    type=pa.list_(pa.float32()))
