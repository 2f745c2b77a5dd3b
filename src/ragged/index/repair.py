"""Rebuilding a lost or damaged catalog (format 3) from what the index still holds.

The page table has each page's document, path, vector count and grid; the
segment files' block headers say which pages of which document each block
holds and how many pages the document has. A document goes back into the
catalog when its blocks cover all its pages and agree with its rows, so a
document a killed run left half-written stays out. Search order follows the
blocks (commit order). A path claimed by two documents (a replacement cut
short) keeps the later one.
"""

from __future__ import annotations

from pathlib import Path

from loguru import logger

from ragged.index.catalog_state import CatalogState, DocEntry
from ragged.index.page_table import PageTable
from ragged.index.segments import SEGMENTS, Extent, scan
from ragged.multivector.grid import PatchGrid


def rebuild(folder: Path, model: str, dim: int, table: PageTable, why: str) -> CatalogState:
    """A catalog state rebuilt from the page table and the segment files."""
    logger.warning("The catalog of the index at {} {}: rebuilt from the page table and the segment files.",
                   folder, why)
    state = CatalogState(model, dim)
    state.lance_version = table.version
    rows = _rows(table)
    blocks: dict[str, list[Extent]] = {}
    doc_pages: dict[str, int] = {}
    segments = folder / SEGMENTS
    if segments.is_dir():
        for block in scan(segments, dim):
            blocks.setdefault(block.doc_hash, []).append(block.extent)
            doc_pages[block.doc_hash] = block.doc_pages
            state.ends[block.extent.file] = max(state.ends.get(block.extent.file, 0), block.extent.end(dim))
            state.last_file = max(state.last_file, block.extent.file)
    for doc_hash, extents in sorted(blocks.items(), key=lambda item: (item[1][0].file, item[1][0].offset)):
        pages = rows.get(doc_hash, {})
        wanted = doc_pages[doc_hash]
        extents = sorted(extents, key=lambda e: e.first_page)
        covered = [p for e in extents for p in range(e.first_page, e.first_page + e.pages)]
        if covered != list(range(1, wanted + 1)) or sorted(pages) != covered:
            state.unpurged.add(doc_hash)
            continue
        if any(sum(pages[p][1] for p in range(e.first_page, e.first_page + e.pages)) != e.vectors for e in extents):
            state.unpurged.add(doc_hash)
            continue
        path = pages[1][0]
        entry = DocEntry(path, wanted, [(pages[p][1], pages[p][2]) for p in covered], extents,
                         all(pages[p][3] for p in covered))
        if path in state.paths:
            old = state.paths[path]
            del state.docs[old]
            state.unpurged.add(old)
        state.docs[doc_hash] = entry
        state.paths[path] = doc_hash
    state.unpurged |= set(rows) - set(state.docs)
    return state


def _rows(table: PageTable) -> dict[str, dict[int, tuple[str, int, PatchGrid | None, bool]]]:
    """doc hash -> page -> (path, vectors, grid, has its text side)."""
    lance = table.table()
    if lance is None:
        return {}
    names = set(lance.schema.names)
    columns = ["doc_hash", "path", "page", "n_vectors", "grid_start", "grid_rows", "grid_cols"]
    has_text = "text_vectors" in names
    with table.guard("reading the page list"):
        rows = lance.search().select(columns).limit(None).to_arrow().to_pydict()
    with_text: set[tuple[str, int]] = set()
    if has_text:
        with table.guard("reading the page list"):
            found = (lance.search().where("text IS NOT NULL AND text_vectors IS NOT NULL")
                     .select(["doc_hash", "page"]).limit(None).to_arrow().to_pydict())
        with_text = set(zip(found["doc_hash"], found["page"], strict=True))
    out: dict[str, dict[int, tuple[str, int, PatchGrid | None, bool]]] = {}
    for h, p, n, v, s, r, c in zip(rows["doc_hash"], rows["path"], rows["page"], rows["n_vectors"],
                                   rows["grid_start"], rows["grid_rows"], rows["grid_cols"], strict=True):
        grid = PatchGrid(s, r, c) if s is not None and r and c else None
        out.setdefault(str(h), {})[int(n)] = (str(p), int(v), grid, (h, n) in with_text)
    return out
