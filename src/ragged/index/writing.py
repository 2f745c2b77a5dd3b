"""The single writer's commits: whole documents, pieces, text sides, moves, removals.

Every change is one catalog record, written after what it names is on disk
(see :mod:`ragged.index.store` for the order); what a record replaces or
removes is deleted from LanceDB after it. After each commit the writer may
run upkeep (:mod:`ragged.index.upkeep`), after a number of commits that
grows with the index, so its cost per commit stays flat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger

from ragged.errors import IndexStoreError
from ragged.index import legacy
from ragged.index.catalog_log import CatalogLog
from ragged.index.catalog_state import DocEntry
from ragged.index.files import check_doc_id
from ragged.index.page_table import UPKEEP_MIN_COMMITS, PageTable
from ragged.index.segments import POOL_MAGIC, SEGMENTS, Extent, SegmentWriter
from ragged.index.upkeep import IndexUpkeep
from ragged.multivector.grid import PatchGrid
from ragged.multivector.pooling import POOLED, pool_pages

if TYPE_CHECKING:
    from ragged.index.meta import IndexMeta

@dataclass(frozen=True)
class StoredPage:
    """One page to store: its vectors, where its patches are, its text (None:
    not read; "": it has none) and its passages' text vectors ((passages,
    text_dim) float32; None: not embedded)."""

    vectors: np.ndarray  # (tokens, dim)
    grid: PatchGrid | None = None
    text: str | None = None
    text_vectors: np.ndarray | None = None




class IndexWriter(IndexUpkeep):
    """Commits of :class:`~ragged.index.store.IndexStore` (the writer's half)."""

    folder: Path
    meta: IndexMeta | None
    writer_model: str | None
    pages: PageTable
    _log: CatalogLog | None
    _segments: SegmentWriter | None
    _since_upkeep: int
    _orphans: set[str]  # documents whose rows were written but whose commit failed

    def _require_writer(self) -> None:
        raise NotImplementedError

    def _meta_for(self, dim: int) -> IndexMeta:
        raise NotImplementedError

    def _rows(self, doc_hash: str, path: str, items: Sequence[StoredPage], first_page: int) -> Any:
        raise NotImplementedError

    # -- documents --------------------------------------------------------

    def add_document(self, doc_hash: str, path: str, pages: Sequence[StoredPage | np.ndarray]) -> None:
        """Store every page of one document in one commit, replacing any document
        stored at ``path`` in the same commit."""
        if not pages:
            return
        writer = self.begin_document(doc_hash, path, len(pages))
        writer.add(pages, final=True)

    def begin_document(self, doc_hash: str, path: str, doc_pages: int) -> DocumentWriter:
        """Write a document in pieces (each durable, none visible) made visible
        by :meth:`DocumentWriter.commit`: a 30,000-page PDF is never held whole."""
        self._require_writer()
        return DocumentWriter(self, check_doc_id(doc_hash), legacy.absolute(path), doc_pages)

    def _store_pages(self, doc_hash: str, path: str, items: list[StoredPage], first_page: int,
                     doc_pages: int) -> tuple[Extent, Extent, list[list[int]], int]:
        """Append a run of pages' vectors, their pooled vectors (the candidate
        stage) and rows; (block, pooled block, pages' vector counts and grids,
        LanceDB version)."""
        dim = int(items[0].vectors.shape[1])
        meta = self._meta_for(dim)
        halves = [np.asarray(p.vectors, dtype=np.float16) for p in items]  # each (tokens, dim)
        if any(h.ndim != 2 or h.shape[1] != meta.dim for h in halves):
            raise IndexStoreError(f"Vectors of size {[h.shape[-1] for h in halves]} do not match the index's "
                                  f"{meta.dim}.")
        if any(h.shape[0] == 0 for h in halves):  # nothing to search or pool: refused before anything is written
            raise IndexStoreError(f"Page {first_page + [h.shape[0] for h in halves].index(0)} of document "
                                  f"{doc_hash[:12]} has no vectors; a page needs at least one.")
        if self._segments is None:
            assert self._log is not None
            state = self._log.state
            self._segments = SegmentWriter(self.folder / SEGMENTS, meta.dim, state.ends, state.last_file)
        lengths = [int(h.shape[0]) for h in halves]
        vectors = np.concatenate(halves, axis=0)  # (sum(lengths), dim) fp16
        extent = self._segments.append(doc_hash, first_page, doc_pages, lengths, vectors, sync=False)
        pooled = self._segments.append(doc_hash, first_page, doc_pages, [POOLED] * len(lengths),
                                       pool_pages(vectors, lengths), POOL_MAGIC)  # one sync for both blocks
        rows = self._rows(doc_hash, path, items, first_page)
        version = self.pages.add(rows, meta.dim)
        described = [[n, *(p.grid.as_list() if p.grid else [])] for n, p in zip(lengths, items, strict=True)]
        return extent, pooled, described, version

    def _record(self, record: dict[str, Any]) -> None:
        assert self._log is not None and self.meta is not None
        orphans = self._orphans
        if orphans:  # rows of a commit that failed after they were written: cleared by the next upkeep
            record["orphans"] = sorted(orphans)
        segments = self._segments
        if segments is not None:  # the committed ends of every file appended to since the last record
            record["ends"] = {str(n): segments.ends.get(n, 0) for n in sorted(segments.touched | {segments.last})}
        self._log.append(record)
        if segments is not None:
            segments.touched.clear()
        orphans.clear()

    def _committed(self, gone: set[str]) -> None:
        """After a commit: delete what it replaced from LanceDB, index text once, keep the index small."""
        if gone:
            self._purge(gone)
        table = self.pages.table()
        if table is not None and "text" in table.schema.names and not self.pages.has_fts():
            try:  # at once: keyword search works whatever stops the run later
                self._record({"op": "lance", "lance": self._index_text()})
            except IndexStoreError as exc:  # the pages are committed; finish() tries again
                logger.warning("The full-text index could not be made yet ({}); keyword search waits for it.", exc)
        self._since_upkeep += 1
        assert self._log is not None
        if self._since_upkeep >= max(UPKEEP_MIN_COMMITS, len(self._log.state.docs) // 8):
            self.upkeep()

    def _index_text(self, replace: bool = False) -> int:
        return self.pages.index_text(replace)

    def _purge(self, hashes: set[str]) -> None:
        version = self.pages.delete(sorted(hashes))
        self._record({"op": "purged", "hashes": sorted(hashes), "lance": version})

    def set_text(self, doc_hash: str, pages: Sequence[tuple[str, np.ndarray]]) -> None:
        """Give a stored document its text side (text and passage vectors of
        each page, in page order) in one commit; its image vectors stay."""
        import pyarrow as pa

        from ragged.index.page_table import flat_vectors

        self._require_writer()
        check_doc_id(doc_hash)
        rows = pa.table({
            "doc_hash": [doc_hash] * len(pages),
            "page": pa.array(range(1, len(pages) + 1), type=pa.int32()),
            "text": pa.array([text for text, _ in pages], type=pa.string()),
            "text_vectors": flat_vectors([vectors for _, vectors in pages]),
        })
        self._record({"op": "text", "hashes": [doc_hash], "lance": self.pages.set_text(rows)})

    def move_document(self, doc_hash: str, new_path: str) -> None:
        """Record that document ``doc_hash`` now lives at ``new_path`` (one commit, nothing re-embedded)."""
        self._require_writer()
        check_doc_id(doc_hash)
        new_path = legacy.absolute(new_path)
        self._record({"op": "move", "hash": doc_hash, "path": new_path, "lance": self.pages.move(doc_hash, new_path)})

    def remove_documents(self, doc_hashes: Sequence[str]) -> int:
        """Remove documents (one commit); returns how many pages went."""
        self._require_writer()
        if self._log is None:
            return 0
        docs = self._log.state.docs
        hashes = sorted({check_doc_id(h) for h in doc_hashes} & set(docs))
        if not hashes:
            return 0
        pages = sum(len(docs[h].pages) for h in hashes)
        self._record({"op": "remove", "hashes": hashes})
        self._purge(set(hashes))
        return pages

    def needs_stage(self) -> bool:
        """True when a stored document has no candidate stage yet (stored by a
        ragged before it): :meth:`finish` builds it from the stored vectors."""
        return self._log is not None and any(not e.staged for e in self._log.state.docs.values())

    def finish(self) -> None:
        """After a run of commits: make sure the full-text index exists, and upkeep."""
        self._require_writer()
        table = self.pages.table()
        if table is None or self._log is None:
            return
        if "text" in table.schema.names and not self.pages.has_fts():
            self._record({"op": "lance", "lance": self._index_text()})
        self.upkeep()


class DocumentWriter:
    """One document written in pieces: each :meth:`add` is durable and invisible;
    :meth:`commit` makes the whole document visible at once."""

    def __init__(self, store: IndexWriter, doc_hash: str, path: str, doc_pages: int) -> None:
        self.store, self.doc_hash, self.path, self.doc_pages = store, doc_hash, path, doc_pages
        self.written = 0

    def add(self, pages: Sequence[StoredPage | np.ndarray], final: bool = False) -> None:
        """Store the next ``pages`` (in page order); with ``final``, they are the
        last and the document is committed with them (one record)."""
        items = [p if isinstance(p, StoredPage) else StoredPage(np.asarray(p)) for p in pages]
        if not items:
            if final:
                self.commit()
            return
        first = self.written + 1
        if first - 1 + len(items) > self.doc_pages:
            raise IndexStoreError(f"Document {self.doc_hash[:12]} was begun with {self.doc_pages} pages, "
                                  f"and {first - 1 + len(items)} were given.")
        extent, pooled, described, version = self.store._store_pages(self.doc_hash, self.path, items, first,
                                                                     self.doc_pages)
        self.written += len(items)
        assert self.store.meta is not None and self.store._log is not None
        try:
            self._commit_pages(items, (extent, pooled), described, version, first, final)
        except IndexStoreError:
            if first == 1:  # its rows are in LanceDB, its record is not: remembered, cleared later
                self.store._orphans.add(self.doc_hash)
            raise

    def _commit_pages(self, items: list[StoredPage], blocks: tuple[Extent, Extent], described: list[list[int]],
                      version: int, first: int, final: bool) -> None:
        assert self.store.meta is not None
        extent, pooled = blocks
        text = all(p.text is not None and p.text_vectors is not None for p in items)
        if final and first == 1 and self.written == self.doc_pages:
            gone = self._gone()
            doc = DocEntry(self.path, self.doc_pages, [], [extent], text, [pooled]).to_json(self.doc_hash)
            doc["pages"] = described
            self.store._record({"op": "add", "doc": doc, "gone": sorted(gone), "lance": version,
                                "model": self.store.meta.model})
            self.store._committed(gone)
            return
        self.store._record({"op": "piece", "hash": self.doc_hash, "path": self.path, "n": self.doc_pages,
                            "pages": described, "extent": extent.as_list(), "pooled": pooled.as_list(),
                            "lance": version, "text": text,
                            "model": self.store.meta.model})
        if final:
            self.commit()

    def _gone(self) -> set[str]:
        assert self.store._log is not None
        state = self.store._log.state
        old = state.paths.get(self.path)
        return {old} if old is not None and old != self.doc_hash else set()

    def commit(self) -> None:
        """Make the document visible (replacing one stored at its path in the same record)."""
        if self.written != self.doc_pages:
            raise IndexStoreError(f"Document {self.doc_hash[:12]} has {self.written} of its {self.doc_pages} "
                                  "pages stored; it cannot be committed.")
        gone = self._gone()
        self.store._record({"op": "done", "hash": self.doc_hash, "gone": sorted(gone)})
        self.store._committed(gone)

    def abandon(self) -> None:
        """Give the document up: its pieces are never shown, and cleared."""
        if self.written:
            self.store._record({"op": "drop", "hashes": [self.doc_hash]})
            self.store._purge({self.doc_hash})
