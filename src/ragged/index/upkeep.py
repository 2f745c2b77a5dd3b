"""Upkeep of an index as the ingest goes, and clean-up after a killed run.

Upkeep runs after a number of commits that grows with the index (so its
cost per commit stays flat), and at the end of a run:

- LanceDB: fragments compacted, new rows folded into the full-text index,
  versions superseded more than :data:`~ragged.index.page_table.RETAIN_S`
  ago deleted;
- segment files: a file mostly holding removed or replaced documents has
  its live blocks copied to the newest file (one ``relocate`` record each)
  and is retired; a retired file is deleted once ``RETAIN_S`` has passed (a
  reader that mapped it keeps reading it: a mapped file outlives its name);
- the candidate stage: documents stored without pooled vectors (by a
  ragged before the stage, or whose pooled block was damaged) get them,
  pooled from their stored vectors (nothing is embedded again; one
  ``relocate`` record each). Commits write the stage themselves, so this
  costs nothing once an index has it.

What a killed run left is cleared when the next writer opens the index
(:meth:`IndexUpkeep._recover`): pieces of a document never finished, rows
of documents never committed or already removed, segment files no record
names; blocks whose headers do not match are reported and their documents
left out, to be embedded again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from loguru import logger

from ragged.index import legacy
from ragged.index.catalog_log import CatalogLog
from ragged.index.catalog_state import DocEntry
from ragged.index.meta import IndexMeta
from ragged.index.page_table import RETAIN_S, PageTable
from ragged.index.segments import (
    MAGIC,
    POOL_MAGIC,
    SEGMENTS,
    Extent,
    SegmentDamaged,
    SegmentMaps,
    SegmentWriter,
    segment_name,
    segment_number,
)
from ragged.multivector.pooling import POOLED, pool_pages

COMPACT_BELOW = 0.5  # a segment file is compacted once less than this share of it is live


class IndexUpkeep:
    """Upkeep of :class:`~ragged.index.store.IndexStore` (part of the writer's half)."""

    folder: Path
    meta: IndexMeta | None
    pages: PageTable
    _log: CatalogLog | None
    _segments: SegmentWriter | None
    _since_upkeep: int

    def _require_writer(self) -> None:
        raise NotImplementedError

    def _record(self, record: dict[str, Any]) -> None:
        raise NotImplementedError

    def _purge(self, hashes: set[str]) -> None:
        raise NotImplementedError

    def _index_text(self, replace: bool = False) -> int:
        raise NotImplementedError

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
        self._build_stage()

    def _writer(self) -> SegmentWriter:
        if self._segments is None:
            assert self._log is not None and self.meta is not None
            state = self._log.state
            self._segments = SegmentWriter(self.folder / SEGMENTS, self.meta.dim, state.ends, state.last_file)
        return self._segments

    def _build_stage(self) -> None:
        """Pool the vectors of documents stored without the candidate stage."""
        assert self._log is not None and self.meta is not None
        todo = [(h, e) for h, e in self._log.state.docs.items() if not e.staged]
        if not todo:
            return
        started = time.perf_counter()
        maps = SegmentMaps(self.folder / SEGMENTS, self.meta.dim)
        writer = self._writer()
        for doc_hash, entry in todo:
            pooled = []
            for extent in entry.extents:
                lengths = [n for n, _ in entry.pages[extent.first_page - 1 : extent.first_page - 1 + extent.pages]]
                centroids = pool_pages(maps.vectors(doc_hash, extent), lengths)  # (pages * POOLED, dim)
                pooled.append(writer.append(doc_hash, extent.first_page, entry.doc_pages, [POOLED] * len(lengths),
                                            centroids, POOL_MAGIC))
            self._record({"op": "relocate", "hash": doc_hash, "extents": [e.as_list() for e in entry.extents],
                          "pooled": [e.as_list() for e in pooled]})
        maps.release()
        logger.info("The candidate stage was built for {} document(s) stored before it ({:.1f} s; nothing embedded "
                    "again).", len(todo), time.perf_counter() - started)

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
                                                                                   for x in [*e.extents, *e.pooled])]:
                self._relocate(maps, doc_hash, entry, number)
            self._record({"op": "retire", "files": [number], "at": time.time()})
        maps.release()

    def _relocate(self, maps: SegmentMaps, doc_hash: str, entry: DocEntry, number: int) -> None:
        writer = self._writer()

        def moved(extents: list[Extent], magic: bytes) -> list[Extent]:
            out = []
            for extent in extents:
                if extent.file != number:
                    out.append(extent)
                    continue
                first = extent.first_page - 1
                lengths = ([n for n, _ in entry.pages[first : first + extent.pages]] if magic == MAGIC
                           else [extent.vectors // extent.pages] * extent.pages)
                out.append(writer.append(doc_hash, extent.first_page, entry.doc_pages, lengths,
                                         maps.vectors(doc_hash, extent, magic), magic))
            return out

        extents, pooled = moved(entry.extents, MAGIC), moved(entry.pooled, POOL_MAGIC)
        self._record({"op": "relocate", "hash": doc_hash, "extents": [e.as_list() for e in extents],
                      "pooled": [e.as_list() for e in pooled]})

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
        damaged, unpooled = self._damaged_documents()
        for doc_hash in sorted(unpooled - set(damaged)):  # pooled again from the vectors by the next upkeep
            logger.warning("The pooled vectors of document {} are damaged; they are made again from its vectors.",
                           doc_hash[:12])
            self._record({"op": "relocate", "hash": doc_hash, "pooled": [],
                          "extents": [e.as_list() for e in state.docs[doc_hash].extents]})
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

    def _damaged_documents(self) -> tuple[dict[str, str], set[str]]:
        """Documents whose blocks are missing, cut short or not theirs (the headers
        are read: a few bytes a document), and those whose pooled blocks are."""
        assert self._log is not None and self.meta is not None
        maps = SegmentMaps(self.folder / SEGMENTS, self.meta.dim)
        damaged: dict[str, str] = {}
        unpooled: set[str] = set()
        for doc_hash, entry in self._log.state.docs.items():
            for extent in entry.extents:
                try:
                    maps.vectors(doc_hash, extent)
                except SegmentDamaged as exc:
                    damaged[doc_hash] = str(exc)
                    break
            for extent in entry.pooled:
                try:
                    maps.vectors(doc_hash, extent, POOL_MAGIC)
                except SegmentDamaged:
                    unpooled.add(doc_hash)
                    break
        maps.release()
        return damaged, unpooled
