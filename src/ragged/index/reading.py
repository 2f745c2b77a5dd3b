"""The reader's half of an index: one catalog snapshot, and what searches read.

A reader takes one snapshot of the catalog at its first use (format 3: the
catalog log, read without LanceDB in milliseconds; formats 1-2: see
:mod:`ragged.index.legacy`), maps the segment files it names, and reads
everything else (text, passage vectors, the full-text index) from LanceDB
at the version that snapshot records. A lost or damaged catalog is rebuilt
(with a warning); documents whose vectors are lost are left out (with a
warning) until ingest embeds them again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from loguru import logger

from ragged.errors import IndexStoreError, ModelMismatchError
from ragged.index import legacy
from ragged.index.catalog import Catalog, DocumentRecord, table_version
from ragged.index.catalog_log import CATALOG_DIR, CatalogDamaged, CatalogLog, CatalogReader
from ragged.index.catalog_log import stamp as log_stamp
from ragged.index.catalog_state import CatalogState
from ragged.index.files import check_doc_id, refuse_link, storage_error
from ragged.index.meta import FORMAT, IndexMeta
from ragged.index.page_table import KeywordHit, PageTable
from ragged.index.repair import rebuild
from ragged.index.segments import (
    HEADER_BYTES,
    MAGIC,
    POOL_MAGIC,
    SEGMENTS,
    Extent,
    SegmentDamaged,
    SegmentMaps,
    read_ahead,
)


class IndexReader:
    """Reading of :class:`~ragged.index.store.IndexStore` (the reader's half)."""

    folder: Path
    meta: IndexMeta | None
    pages: PageTable
    reader: CatalogReader | None
    _catalog: Catalog | None
    _maps: SegmentMaps | None
    _log: CatalogLog | None

    @property
    def writable(self) -> bool:
        raise NotImplementedError

    @property
    def table_folder(self) -> Path:
        """Where LanceDB keeps the pages table."""
        return self.pages.table_folder

    @property
    def legacy(self) -> bool:
        """True for an index of format 1 or 2 (read as it is until the next ingest)."""
        return self.meta is not None and self.meta.format < FORMAT

    def stamp(self) -> tuple[Any, ...] | None:
        """What changes with every commit, read cheaply (a listing and a stat; no LanceDB)."""
        if self.legacy:
            return ("lance", table_version(self.table_folder))
        return log_stamp(self.folder / CATALOG_DIR)

    def catalog(self) -> Catalog:
        """Every stored page, grouped by document in page order (a reader's snapshot, or the writer's current)."""
        if self._log is not None:
            return self._log.state.catalog()
        if self._catalog is None:
            self._catalog = self._read_catalog()
        return self._catalog

    def _read_catalog(self) -> Catalog:
        if self.legacy:
            return legacy.read_catalog(self.folder, self.meta, self.pages, self.writable)
        state, at = self._read_state()
        if state is None:
            return Catalog([], [])
        self._check_model(state)
        return self._readable(state.catalog(at))

    def _read_state(self) -> tuple[CatalogState | None, tuple[int, int] | None]:
        """The catalog log's state, rebuilt (with a warning) where it is lost or damaged."""
        folder = self.folder / CATALOG_DIR
        refuse_link(folder)
        if not folder.is_dir():
            if self.meta is not None and (self.pages.exists() or any((self.folder / SEGMENTS).glob("*.seg"))):
                return self._rebuilt("is missing"), None
            return None, None  # a new index: its first commit is under way
        reader = self.reader or CatalogReader(folder)
        try:
            reader.update()  # a reader kept from an earlier store reads only what was appended since
        except CatalogDamaged as exc:
            return self._rebuilt(f"is damaged ({exc})"), None
        except OSError as exc:
            raise storage_error(exc, folder) from exc
        if reader.state is None:
            return (self._rebuilt("is missing") if self.pages.exists() else None), None
        return reader.state, reader.stamp

    def _rebuilt(self, why: str) -> CatalogState:
        assert self.meta is not None
        if not self.table_folder.exists():
            raise IndexStoreError(
                f"The index at {self.folder} is damaged: its catalog {why} and its page table "
                f"({self.table_folder}) is missing. Restore it from a backup, or ingest into a new --index folder.")
        return rebuild(self.folder, self.meta.model, self.meta.dim, self.pages, why)

    def _check_model(self, state: CatalogState) -> None:
        assert self.meta is not None
        if state.model != self.meta.model or state.dim != self.meta.dim:
            raise ModelMismatchError(
                f"The index at {self.folder} names {self.meta.model!r} in ragged-index.json, but its vectors were "
                f"made by {state.model!r} (width {state.dim}); set \"model\": {state.model!r} there again, or "
                "ingest into a new --index folder.")

    def _readable(self, catalog: Catalog) -> Catalog:
        """``catalog`` less documents whose blocks lie in missing segment files or
        past their end (with a warning: the next ingest embeds them again), and
        less pooled blocks so damaged (their pages are then scored exactly; the
        next ingest pools them again); the files of the rest are mapped now, so
        a later compaction cannot take them away."""
        assert self.meta is not None
        dim = self.meta.dim
        maps = self._maps = SegmentMaps(self.folder / SEGMENTS, dim)
        sizes: dict[int, int] = {}
        for extents in [*catalog.extents.values(), *catalog.pooled.values()]:
            for e in extents:
                if e.file not in sizes:
                    try:
                        sizes[e.file] = maps.hold(e.file)
                    except SegmentDamaged as exc:
                        logger.warning("{}", exc)
                        sizes[e.file] = 0
        gone = {h for h, extents in catalog.extents.items() if any(e.end(dim) > sizes[e.file] for e in extents)}
        unpooled = {h for h, extents in catalog.pooled.items() if any(e.end(dim) > sizes[e.file] for e in extents)}
        if not gone and not unpooled:
            return catalog
        if gone:
            logger.warning("{} document(s) of the index at {} are left out of search (their vectors are missing or "
                           "cut short); 'ragged ingest' embeds them again.", len(gone), self.folder)
        return Catalog([p for p in catalog.pages if p.doc_hash not in gone],
                       [d for d in catalog.documents if d not in gone],
                       {h: e for h, e in catalog.extents.items() if h not in gone}, catalog.lance_version,
                       catalog.stamp, {h: e for h, e in catalog.pooled.items() if h not in gone | unpooled})

    def _check_table(self) -> None:
        if not self.legacy and self.catalog().lance_version is not None and not self.pages.exists():
            raise IndexStoreError(
                f"The index at {self.folder} is damaged: its page table ({self.table_folder}) is missing. "
                "Restore it from a backup, or ingest into a new --index folder.")

    def documents(self) -> list[DocumentRecord]:
        """Every stored document, in search order."""
        return self.catalog().document_records()

    def known_hashes(self) -> set[str]:
        """Content hashes of the documents stored."""
        if self._log is not None:
            return set(self._log.state.docs)
        return set(self.catalog().documents)

    def runs(self, catalog: Catalog) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """The vectors of ``catalog``'s pages in catalog order, in runs of whole
        pages stored together: (first catalog position, (pages,) vector counts,
        (vectors, dim) fp16 memory-mapped)."""
        position = 0
        pages = catalog.pages
        while position < len(pages):
            doc = pages[position].doc_hash
            end = position
            while end < len(pages) and pages[end].doc_hash == doc:
                end += 1
            lengths = np.array([p.n_vectors for p in pages[position:end]], dtype=np.int64)
            if self.legacy or doc not in catalog.extents:
                assert self.meta is not None
                yield position, lengths, legacy.segment(self.folder, self.meta, self.pages, doc, int(lengths.sum()))
            else:
                for extent in catalog.extents[doc]:
                    at = position + extent.first_page - 1
                    yield at, lengths[at - position : at - position + extent.pages], self._vectors(doc, extent)
            position = end

    def gather(self, catalog: Catalog, positions: np.ndarray) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """The vectors of the pages at ``positions`` (sorted catalog positions), a
        stored run at a time: (positions, (pages,) vector counts, (vectors, dim)
        fp16 rows, copied out of the maps)."""
        if not len(positions):
            return
        lengths = catalog.lengths
        starts = catalog.doc_starts
        assert self.meta is not None
        owners = np.searchsorted(starts, positions, side="right") - 1  # (positions,) document of each page
        bounds = np.flatnonzero(np.diff(owners)) + 1
        plan: list[tuple[str, np.ndarray, int, np.ndarray, Extent | None]] = []  # (doc, wanted, first, offsets, extent)
        for wanted, owner in zip(np.split(positions, bounds), np.split(owners, bounds), strict=True):
            d = int(owner[0])
            doc, base = catalog.documents[d], int(starts[d])
            count = catalog.page_counts[doc]
            runs = ([(base + e.first_page - 1, e.pages, e) for e in catalog.extents[doc]]
                    if not self.legacy and doc in catalog.extents else [(base, count, None)])
            for first, pages, extent in runs:
                mine = wanted[(wanted >= first) & (wanted < first + pages)]
                if len(mine):
                    offsets = np.concatenate(([0], np.cumsum(lengths[first : first + pages])))  # (pages + 1,) rows
                    plan.append((doc, mine, first, offsets, extent))
        row = self.meta.dim * 2  # bytes of one fp16 vector

        def spans(item: tuple[str, np.ndarray, int, np.ndarray, Extent | None]) -> list[tuple[int, int, int]]:
            _, mine, first, offsets, extent = item
            if extent is None:
                return []
            return [(extent.file, extent.offset, HEADER_BYTES)] + [
                (extent.file, extent.offset + HEADER_BYTES + int(offsets[p - first]) * row,
                 int(offsets[p - first + 1] - offsets[p - first]) * row) for p in mine.tolist()]

        for doc, mine, first, offsets, extent in read_ahead(self._segment_maps(), plan, spans):
            if extent is None:
                vectors = legacy.segment(self.folder, self.meta, self.pages, doc, int(offsets[-1]))
            else:
                vectors = self._vectors(doc, extent)
            rows = [vectors[offsets[p - first] : offsets[p - first + 1]] for p in mine.tolist()]
            yield mine, lengths[mine], np.concatenate(rows) if len(rows) > 1 else np.array(rows[0])

    def pooled_runs(self, catalog: Catalog) -> Iterator[tuple[int, int, np.ndarray]]:
        """The pooled vectors (the candidate stage) of ``catalog``'s pages that
        have them, in catalog order, a block at a time: (first catalog position,
        pages, (pages * pooled, dim) fp16 memory-mapped)."""
        assert self.meta is not None
        dim = self.meta.dim
        blocks: list[tuple[int, str, Extent]] = []  # (first catalog position, document, extent)
        position = 0
        for doc in catalog.documents:
            blocks += [(position + e.first_page - 1, doc, e) for e in catalog.pooled.get(doc, ())]
            position += catalog.page_counts[doc]
        for first, doc, extent in read_ahead(self._segment_maps(), blocks,
                                             lambda b: [(b[2].file, b[2].offset, b[2].end(dim) - b[2].offset)]):
            yield first, extent.pages, self._vectors(doc, extent, POOL_MAGIC)

    def _segment_maps(self) -> SegmentMaps:
        assert self.meta is not None
        if self._maps is None:
            self._maps = SegmentMaps(self.folder / SEGMENTS, self.meta.dim)
        return self._maps

    def _vectors(self, doc_hash: str, extent: Any, magic: bytes = MAGIC) -> np.ndarray:
        maps = self._segment_maps()
        try:
            return maps.vectors(doc_hash, extent, magic)
        except SegmentDamaged as exc:
            logger.warning("{}", exc)
            raise IndexStoreError(f"The index at {self.folder} is damaged: {exc}. Run 'ragged ingest' again: it "
                                  "leaves that document out and embeds it again.") from exc

    def page_vectors(self, doc_hash: str, page: int) -> np.ndarray:
        """One page's vectors, (tokens, dim) fp16."""
        catalog = self.catalog()
        records = [p for p in catalog.pages if p.doc_hash == doc_hash]
        if not 1 <= page <= len(records):
            raise IndexStoreError(f"Document {doc_hash[:12]} has no page {page}.")
        start = next(n for n, p in enumerate(catalog.pages) if p.doc_hash == doc_hash)
        for first, lengths, vectors in self.runs(Catalog(catalog.pages[start : start + len(records)], [doc_hash],
                                                         catalog.extents, catalog.lance_version)):
            offset = page - 1 - first
            if 0 <= offset < len(lengths):
                at = int(lengths[:offset].sum())
                return vectors[at : at + int(lengths[offset])]
        raise IndexStoreError(f"Document {doc_hash[:12]} has no page {page}.")

    def text_vectors(self, catalog: Catalog | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Every passage vector of ``catalog``'s pages (the snapshot's by default)
        and its page's catalog position: ((passages,) int64, (passages, text_dim) float32)."""
        catalog = catalog or self.catalog()
        self._check_table()
        dim = self.meta.text_dim if self.meta is not None and self.meta.text_dim else 0
        rows = self.pages.text_rows(catalog.lance_version) if dim else None
        if rows is None:
            return np.zeros(0, dtype=np.int64), np.zeros((0, dim), dtype=np.float32)
        position = {(p.doc_hash, p.page): n for n, p in enumerate(catalog.pages)}
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

    def keyword(self, query: str, limit: int, notices: list[str] | None = None) -> list[KeywordHit]:
        """The best pages for ``query`` by LanceDB's full-text search (BM25);
        what changed about the query is added to ``notices``."""
        self._check_table()
        hits, said = self.pages.keyword(query, limit, self.catalog().lance_version)
        if notices is not None:
            notices.extend(said)
        return hits

    def page_texts(self, pairs: Sequence[tuple[str, int]]) -> dict[tuple[str, int], str]:
        """The stored text of the given (document hash, page) pairs, as of this
        reader's catalog ("" where a page has none; unknown pairs left out)."""
        self._check_table()
        return self.pages.page_texts([(check_doc_id(h), p) for h, p in pairs], self.catalog().lance_version)

    def probe_texts(self, limit: int) -> list[tuple[str, int, str]]:
        """(document, page, text) of up to ``limit`` pages of this reader's
        catalog that have text (what fusion weights are learned from)."""
        self._check_table()
        return self.pages.probe_texts(limit, self.catalog().lance_version)

    def documents_without_text(self) -> set[str]:
        """Stored documents without passage vectors: built before the text side,
        or ingested with the text model off."""
        if self._log is not None:
            return {h for h, e in self._log.state.docs.items() if not e.text}
        if self.pages.table() is None:
            return set()
        if "text_vectors" not in self.pages.table().schema.names:
            return set(self.catalog().documents)
        return self.pages.without_text() & set(self.catalog().documents)

    def needs_text_index(self) -> bool:
        """True when pages have text but the full-text index is missing."""
        table = self.pages.table()
        return table is not None and "text" in table.schema.names and not self.pages.has_fts()

    # -- writing (see IndexWriter) ------------------------------------------
