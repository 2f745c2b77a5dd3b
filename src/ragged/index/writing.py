"""The single writer's commits, and the upkeep that keeps an index small.

Every change is one catalog record, written after what it names is on disk
(see :mod:`ragged.index.store` for the order). Upkeep runs as the ingest
goes, after a number of commits that grows with the index (so its cost per
commit stays flat), and at the end of a run:

- LanceDB: fragments compacted, new rows folded into the full-text index,
  versions superseded more than a minute ago deleted;
- segment files: a file mostly holding removed or replaced documents has
  its live blocks copied to the newest file (one ``relocate`` record each)
  and is retired; a retired file is deleted a minute later (a reader that
  mapped it keeps reading it: a mapped file outlives its name).

What a killed run left is cleared when the next writer opens the index
(:meth:`IndexWriter._recover`): pieces of a document never finished, rows
of documents never committed or already removed, segment files no record
names, a block cut short at a file's end.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from loguru import logger

from ragged.errors import IndexStoreError
from ragged.index import legacy
from ragged.index.catalog import PatchGrid
from ragged.index.catalog_log import CatalogLog
from ragged.index.catalog_state import DocEntry
from ragged.index.files import check_doc_id
from ragged.index.page_table import RETAIN_S, UPKEEP_MIN_COMMITS, PageTable
from ragged.index.segments import (
    SEGMENTS,
    Extent,
    SegmentDamaged,
    SegmentMaps,
    SegmentWriter,
    segment_name,
    segment_number,
)

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


COMPACT_BELOW = 0.5  # a segment file is compacted once less than this share of it is live


class IndexWriter:
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
                     doc_pages: int) -> tuple[Extent, list[list[int]], int]:
        """Append a run of pages' vectors and rows; (block, pages' vector counts and grids, LanceDB version)."""
        dim = int(items[0].vectors.shape[1])
        meta = self._meta_for(dim)
        halves = [np.asarray(p.vectors, dtype=np.float16) for p in items]  # each (tokens, dim)
        if any(h.ndim != 2 or h.shape[1] != meta.dim for h in halves):
            raise IndexStoreError(f"Vectors of size {[h.shape[-1] for h in halves]} do not match the index's "
                                  f"{meta.dim}.")
        if self._segments is None:
            assert self._log is not None
            state = self._log.state
            self._segments = SegmentWriter(self.folder / SEGMENTS, meta.dim, state.ends, state.last_file)
        extent = self._segments.append(doc_hash, first_page, doc_pages, [h.shape[0] for h in halves],
                                       np.concatenate(halves, axis=0))
        rows = self._rows(doc_hash, path, items, first_page)
        version = self.pages.add(rows, meta.dim)
        described = [[int(h.shape[0]), *(p.grid.as_list() if p.grid else [])] for h, p in zip(halves, items,
                                                                                              strict=True)]
        return extent, described, version

    def _record(self, record: dict[str, Any]) -> None:
        assert self._log is not None and self.meta is not None
        orphans = self._orphans
        if orphans:  # rows of a commit that failed after they were written: cleared by the next upkeep
            record["orphans"] = sorted(orphans)
        if self._segments is not None:
            record["ends"] = {str(self._segments.last): self._segments.ends.get(self._segments.last, 0)}
        self._log.append(record)
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

    def finish(self) -> None:
        """After a run of commits: make sure the full-text index exists, and upkeep."""
        self._require_writer()
        table = self.pages.table()
        if table is None or self._log is None:
            return
        if "text" in table.schema.names and not self.pages.has_fts():
            self._record({"op": "lance", "lance": self._index_text()})
        self.upkeep()

    # -- upkeep -----------------------------------------------------------

    def upkeep(self) -> None:
        """Compact and prune LanceDB, compact segment files, delete retired ones."""
        self._require_writer()
        self._since_upkeep = 0
        assert self._log is not None
        if self._log.state.unpurged:
            self._purge(set(self._log.state.unpurged))
        if self.pages.table() is not None:
            self._record({"op": "lance", "lance": self.pages.upkeep()})
        self._compact_segments()
        self._delete_retired()

    def _compact_segments(self) -> None:
        assert self._log is not None and self.meta is not None
        state = self._log.state
        live = state.live_bytes()
        current = self._segments.last if self._segments is not None else state.last_file
        pending = {e.file for entry in state.pending.values() for e in entry.extents}
        sparse = [n for n, end in state.ends.items() if n != current and n not in state.retired and n not in pending
                  and live.get(n, 0) < end * COMPACT_BELOW]
        if not sparse:
            return
        maps = SegmentMaps(self.folder / SEGMENTS, self.meta.dim)
        for number in sorted(sparse):
            for doc_hash, entry in [(h, e) for h, e in state.docs.items() if any(x.file == number
                                                                                   for x in e.extents)]:
                self._relocate(maps, doc_hash, entry, number)
            self._record({"op": "retire", "files": [number], "at": time.time()})
        maps.release()

    def _relocate(self, maps: SegmentMaps, doc_hash: str, entry: DocEntry, number: int) -> None:
        assert self._segments is not None or self.meta is not None
        if self._segments is None:
            assert self._log is not None and self.meta is not None
            state = self._log.state
            self._segments = SegmentWriter(self.folder / SEGMENTS, self.meta.dim, state.ends, state.last_file)
        moved = []
        for extent in entry.extents:
            if extent.file != number:
                moved.append(extent)
                continue
            vectors = maps.vectors(doc_hash, extent)
            lengths = [n for n, _ in entry.pages[extent.first_page - 1 : extent.first_page - 1 + extent.pages]]
            moved.append(self._segments.append(doc_hash, extent.first_page, entry.doc_pages, lengths, vectors))
        self._record({"op": "relocate", "hash": doc_hash, "extents": [e.as_list() for e in moved]})

    def _delete_retired(self, now: float | None = None) -> None:
        assert self._log is not None
        now = time.time() if now is None else now
        due = sorted(n for n, at in self._log.state.retired.items() if now - at >= RETAIN_S)
        for number in due:
            (self.folder / SEGMENTS / segment_name(number)).unlink(missing_ok=True)
        if due:
            self._record({"op": "deleted", "files": due})

    # -- after a killed run -----------------------------------------------

    def _recover(self) -> None:
        """Clear what a killed run left; leave out documents whose blocks are damaged."""
        assert self._log is not None
        state = self._log.state
        if state.pending:
            self._record({"op": "drop", "hashes": sorted(state.pending)})
        if self.pages.table() is not None:
            legacy.remove_leftovers(self.folder, self.pages)
            if self.pages.version != state.lance_version:  # LanceDB committed something the catalog never did
                state.unpurged |= self.pages.doc_hashes() - set(state.docs)
            if state.unpurged:
                self._purge(set(state.unpurged))
            if self.pages.has_fts() and not self.pages.has_positions():
                self._record({"op": "lance", "lance": self._index_text(replace=True)})
        self._clear_segment_files()
        self._delete_retired()
        damaged = self._damaged_documents()
        if damaged:
            for doc_hash, why in damaged.items():
                logger.warning("Document {} ({}) is left out of the index: {}; it is embedded again if its file "
                               "is given to ingest.", doc_hash[:12], state.docs[doc_hash].path, why)
            self._record({"op": "remove", "hashes": sorted(damaged)})
            self._purge(set(damaged))

    def _clear_segment_files(self) -> None:
        """Segment files no record names (a killed run made them)."""
        assert self._log is not None
        folder = self.folder / SEGMENTS
        if not folder.is_dir() or folder.is_symlink():
            return
        for entry in folder.iterdir():
            number = segment_number(entry.name)
            if number is not None and number not in self._log.state.ends and entry.is_file():
                entry.unlink()

    def _damaged_documents(self) -> dict[str, str]:
        """Documents whose blocks are missing, cut short or not theirs (the headers
        are read: a few bytes a document)."""
        assert self._log is not None and self.meta is not None
        maps = SegmentMaps(self.folder / SEGMENTS, self.meta.dim)
        damaged: dict[str, str] = {}
        for doc_hash, entry in self._log.state.docs.items():
            for extent in entry.extents:
                try:
                    maps.vectors(doc_hash, extent)
                except SegmentDamaged as exc:
                    damaged[doc_hash] = str(exc)
                    break
        maps.release()
        return damaged


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
        extent, described, version = self.store._store_pages(self.doc_hash, self.path, items, first, self.doc_pages)
        self.written += len(items)
        assert self.store.meta is not None and self.store._log is not None
        try:
            self._commit_pages(items, extent, described, version, first, final)
        except IndexStoreError:
            if first == 1:  # its rows are in LanceDB, its record is not: remembered, cleared later
                self.store._orphans.add(self.doc_hash)
            raise

    def _commit_pages(self, items: list[StoredPage], extent: Extent, described: list[list[int]], version: int,
                      first: int, final: bool) -> None:
        assert self.store.meta is not None
        text = all(p.text is not None and p.text_vectors is not None for p in items)
        if final and first == 1 and self.written == self.doc_pages:
            gone = self._gone()
            doc = DocEntry(self.path, self.doc_pages, [], [extent], text).to_json(self.doc_hash)
            doc["pages"] = described
            self.store._record({"op": "add", "doc": doc, "gone": sorted(gone), "lance": version,
                                "model": self.store.meta.model})
            self.store._committed(gone)
            return
        self.store._record({"op": "piece", "hash": self.doc_hash, "path": self.path, "n": self.doc_pages,
                            "pages": described, "extent": extent.as_list(), "lance": version, "text": text,
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
