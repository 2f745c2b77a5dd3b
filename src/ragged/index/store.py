"""The on-disk index (format 3): segment files, the catalog log, LanceDB for the rest.

==========================  ==================================================
``ragged-index.json``       model, vector width, text model, format
``segments/NNNNNNNN.seg``   every page's vectors, once, fp16, memory-mappable
                            (:mod:`ragged.index.segments`)
``catalog/``                the commit point: a snapshot and an append-only log
                            of commits (:mod:`ragged.index.catalog_log`)
``lancedb/pages.lance``     text, passage vectors, metadata, full-text index
                            (:mod:`ragged.index.page_table`)
==========================  ==================================================

A document is committed in this order: its vectors appended to a segment
file (synced), its rows added to LanceDB, then one line appended to the
catalog log (synced). The log line is the commit: until it is on disk
nothing of the document is visible, and whatever a killed run wrote before
it (a block, rows) is unused and cleared by the next writer. A changed
file's old version goes in the same line as its new one. A document too
large to hold in memory is written in pieces, each durable, and made
visible by one last line (:meth:`IndexStore.begin_document`). Readers take
one snapshot of the catalog and memory-map the segment files it names.

Formats 1 and 2 are read as they were (:mod:`ragged.index.legacy`) and
upgraded by the next writer.
"""

from __future__ import annotations

import fcntl
import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from types import TracebackType
from typing import Any

from loguru import logger

from ragged.embeddings.names import is_storable, stored_name
from ragged.errors import IndexStoreError, ModelMismatchError
from ragged.index import legacy
from ragged.index.catalog import Catalog
from ragged.index.catalog_log import CATALOG_DIR, CatalogDamaged, CatalogLog, CatalogReader
from ragged.index.catalog_state import CatalogState
from ragged.index.files import UMASK, ensure_folder, refuse_link, storage_error
from ragged.index.meta import FORMAT, IndexMeta, read_meta, write_meta
from ragged.index.page_table import TABLE, KeywordHit, PageTable, flat_vectors, schema, sql_string
from ragged.index.reading import IndexReader
from ragged.index.segments import SEGMENTS, SegmentMaps, SegmentWriter
from ragged.index.writing import IndexWriter, StoredPage

absolute = legacy.absolute
__all__ = ["TABLE", "IndexStore", "KeywordHit", "StoredPage", "absolute", "sql_string"]


class IndexStore(IndexReader, IndexWriter):
    """An index folder. Open with :meth:`open` (read) or :meth:`open_for_writing`.

    A reader's catalog is one snapshot, taken at its first use: open another
    store to see later commits (:meth:`stamp` says when there are some)."""

    def __init__(self, folder: Path, meta: IndexMeta | None, writer_model: str | None = None) -> None:
        self.folder = folder
        self.meta = meta
        self.writer_model = writer_model
        self.pages = PageTable(folder)
        self._lock_fd: int | None = None
        self._catalog: Catalog | None = None
        self._maps: SegmentMaps | None = None
        self._log: CatalogLog | None = None
        self._segments: SegmentWriter | None = None
        self._pending_text: tuple[str, int] | None = None  # a text model named before the first document
        self._since_upkeep = 0
        self._orphans: set[str] = set()
        self.reader: CatalogReader | None = None  # set to follow the catalog log incrementally (the server)

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
        second writer at the same time; upgrades an older format in place and
        clears what a killed run left."""
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
        """Finish the writer's files and release its lock."""
        if self._log is not None:
            self._log.close()
        if self._segments is not None:
            self._segments.close()
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

    def _require_writer(self) -> None:
        if self.writer_model is None or not self.writable:
            raise IndexStoreError("This index was opened for reading; open it with open_for_writing.")

    def _prepare_for_writing(self) -> None:
        """Upgrade an older format, and clear what killed runs left behind."""
        if self.meta is not None and self.meta.format < FORMAT:
            self._upgrade()
        if self.meta is not None:
            folder = self.folder / CATALOG_DIR
            reader = CatalogReader(refuse_link(folder))
            state: CatalogState | None = None
            try:
                reader.update()
                state = reader.state
            except CatalogDamaged as exc:
                state = self._rebuilt(f"is damaged ({exc})")
            if state is None:
                state = self._rebuilt("is missing") if self.pages.exists() else CatalogState(self.meta.model,
                                                                                            self.meta.dim)
            self._check_model(state)
            self._log = CatalogLog.resume(reader) if state is reader.state else CatalogLog.create(folder, state)
            self._recover()
        self._remove_temporaries()

    def _upgrade(self) -> None:
        assert self.meta is not None
        started = time.perf_counter()
        if self.pages.table() is not None:
            models = self.pages.models()
            if models - {self.meta.model}:
                raise ModelMismatchError(
                    f"The index at {self.folder} names {self.meta.model!r} in ragged-index.json, but holds vectors "
                    f"of {sorted(models - {self.meta.model})}; ingest into a new --index folder.")
        state = legacy.to_format_3(self.folder, self.meta, self.pages)
        self.meta = self.meta.upgraded()
        write_meta(self.folder, self.meta)  # the switch: from here the index is read as format 3
        logger.info("Index at {} upgraded to format {} ({} documents, {:.1f} s; nothing embedded again).",
                    self.folder, FORMAT, len(state.docs), time.perf_counter() - started)

    def _remove_temporaries(self) -> None:
        """Temporary files of interrupted atomic writes (only a writer, holding the lock, may do this)."""
        for folder in (self.folder, self.folder / SEGMENTS, self.folder / CATALOG_DIR):
            if not folder.is_dir() or folder.is_symlink():
                continue
            for entry in folder.iterdir():
                if entry.name.startswith(".") and "-" in entry.name and entry.is_file() and not entry.is_symlink():
                    entry.unlink(missing_ok=True)

    def _meta_for(self, dim: int) -> IndexMeta:
        """The index's metadata, made with its first document."""
        assert self.writer_model is not None
        if self.meta is None:
            text_model, text_dim = self._pending_text or (None, None)
            self.meta = IndexMeta(model=self.writer_model, dim=dim, text_model=text_model, text_dim=text_dim)
            write_meta(self.folder, self.meta)
            self._log = CatalogLog.create(self.folder / CATALOG_DIR, CatalogState(self.meta.model, dim))
        elif dim != self.meta.dim:
            raise IndexStoreError(f"Vectors of size {dim} do not match the index's {self.meta.dim}.")
        return self.meta

    def _rows(self, doc_hash: str, path: str, items: Sequence[StoredPage], first_page: int) -> Any:
        import pyarrow as pa

        assert self.meta is not None
        return pa.table({
            "doc_hash": [doc_hash] * len(items),
            "path": [path] * len(items),
            "page": pa.array(range(first_page, first_page + len(items)), type=pa.int32()),
            "n_vectors": pa.array([int(p.vectors.shape[0]) for p in items], type=pa.int32()),
            "model": [self.meta.model] * len(items),
            "grid_start": pa.array([p.grid.start if p.grid else None for p in items], type=pa.int32()),
            "grid_rows": pa.array([p.grid.rows if p.grid else None for p in items], type=pa.int32()),
            "grid_cols": pa.array([p.grid.cols if p.grid else None for p in items], type=pa.int32()),
            "text": pa.array([p.text for p in items], type=pa.string()),
            "text_vectors": flat_vectors([p.text_vectors for p in items]),
        }, schema=schema(self.meta.dim))

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
