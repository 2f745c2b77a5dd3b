"""Indexes of formats 1 and 2: read as they are, upgraded by the next ingest.

Those formats kept every vector twice: in the LanceDB table (the source of
truth) and in one fp16 ``.npy`` segment per document, with ``catalog.json``
rewritten whole at every commit. A search reads them as before (a segment
that is missing or damaged is rebuilt from LanceDB, with a warning). The
next ``ragged ingest`` upgrades the index to format 3 without embedding
anything again (:func:`to_format_3`): the segments (or, where one is
damaged, LanceDB's copy) are copied into segment files, the catalog log is
written, and only then does ``ragged-index.json`` say format 3 (a run
killed before that leaves a format-2 index, upgraded by the next run);
the vectors column, the ``.npy`` files and ``catalog.json`` are removed
after.
"""

from __future__ import annotations

import os
import shutil
from contextlib import suppress
from pathlib import Path

import numpy as np
from loguru import logger

from ragged.errors import IndexStoreError
from ragged.index.catalog import (
    CATALOG,
    Catalog,
    PageRecord,
    read_catalog_file,
    table_version,
    write_catalog_file,
)
from ragged.index.catalog_log import CATALOG_DIR, CatalogLog
from ragged.index.catalog_state import CatalogState, DocEntry
from ragged.index.files import atomic_write, check_doc_id, refuse_link
from ragged.index.meta import IndexMeta
from ragged.index.page_table import PageTable, schema, sql_string
from ragged.index.segments import SEGMENTS, SegmentWriter, segment_number
from ragged.multivector.grid import PatchGrid

_FORMAT_2_COLUMNS = ("grid_start", "grid_rows", "grid_cols", "text", "text_vectors")


def absolute(path: str | Path) -> str:
    """The absolute, normalised form of a document path (links resolved)."""
    return str(Path(path).expanduser().resolve())


def read_catalog(folder: Path, meta: IndexMeta | None, table: PageTable, writable: bool) -> Catalog:
    """The catalog of a format-1/2 index: ``catalog.json`` while current, else LanceDB's rows."""
    if not table.table_folder.exists():
        if meta is not None and (folder / CATALOG).is_file():
            raise IndexStoreError(
                f"The index at {folder} is damaged: its page table ({table.table_folder}) is missing. "
                "Restore it from a backup, or ingest into a new --index folder."
            )
        return Catalog([], [])
    version = table_version(table.table_folder)
    if version is None and not (folder / CATALOG).is_file():
        return Catalog([], [])  # the first commit is under way
    cached = read_catalog_file(folder, version)
    if cached is not None:
        return cached  # current: LanceDB is not even imported
    lance = table.table()
    names = set(lance.schema.names)
    columns = ["doc_hash", "path", "page", "n_vectors"] + [c for c in ("grid_start", "grid_rows", "grid_cols")
                                                           if c in names]
    with table.guard("reading the page list"):
        rows = lance.search().select(columns).limit(None).to_arrow().to_pydict()
    grids: list[PatchGrid | None] = [None] * len(rows["doc_hash"])
    if "grid_start" in rows:
        grids = [PatchGrid(s, r, c) if s is not None and r and c else None
                 for s, r, c in zip(rows["grid_start"], rows["grid_rows"], rows["grid_cols"], strict=True)]
    records = [PageRecord(str(h), str(p), int(n), int(v), g) for h, p, n, v, g in zip(
        rows["doc_hash"], rows["path"], rows["page"], rows["n_vectors"], grids, strict=True)]
    catalog = Catalog.from_pages(records)
    if writable or os.access(folder, os.W_OK):
        with suppress(IndexStoreError):  # a reader that cannot write reads LanceDB next time too
            write_catalog_file(folder, catalog, int(lance.version))
    return catalog


def segment_path(folder: Path, doc_hash: str) -> Path:
    return refuse_link(folder / SEGMENTS) / f"{check_doc_id(doc_hash)}.npy"


def segment(folder: Path, meta: IndexMeta, table: PageTable, doc_hash: str, expected: int) -> np.ndarray:
    """A document's vectors, (tokens, dim) fp16, memory-mapped; rebuilt from
    LanceDB (with a warning) when the file is missing, empty or does not match."""
    path = segment_path(folder, doc_hash)
    problem = "missing"
    try:
        vectors = np.load(refuse_link(path), mmap_mode="c")  # copy-on-write: writable views, file untouched
        if vectors.dtype == np.float16 and vectors.shape == (expected, meta.dim):
            return vectors  # type: ignore[no-any-return]
        problem = f"of shape {vectors.shape} {vectors.dtype}, not ({expected}, {meta.dim}) float16"
    except IndexStoreError:
        raise
    except FileNotFoundError:
        pass
    except Exception as exc:  # zero bytes, truncated, not an .npy
        problem = f"unreadable ({type(exc).__name__})"
    vectors = vectors_from_lancedb(table, meta.dim, doc_hash)
    if vectors.shape[0] != expected:
        raise IndexStoreError(f"Index damaged: document {doc_hash[:12]} has inconsistent vectors; "
                              "re-ingest it into a new --index.")
    logger.warning("The search segment {} was {}: rebuilt from the page table.", path, problem)
    if os.access(folder, os.W_OK):
        with suppress(IndexStoreError):  # searching still works, only slower next time
            atomic_write(path, lambda fh: np.save(fh, vectors))
    return vectors


def vectors_from_lancedb(table: PageTable, dim: int, doc_hash: str) -> np.ndarray:
    lance = table.table()
    if lance is None or "vectors" not in lance.schema.names:
        raise IndexStoreError(f"The index at {table.index_folder} has no page vectors for document {doc_hash[:12]}; "
                              "run 'ragged ingest' again.")
    with table.guard("reading a document's vectors"):
        rows = (lance.search().where(f"doc_hash = {sql_string(check_doc_id(doc_hash))}")
                .select(["page", "vectors"]).limit(None).to_arrow()).sort_by("page")
        column = rows.column("vectors").combine_chunks()
        flat = column.flatten().flatten().to_numpy(zero_copy_only=False)
    return np.array(flat, dtype=np.float16).reshape(-1, dim)  # a writable copy


def upgrade_columns(meta: IndexMeta, table: PageTable, catalog: Catalog) -> None:
    """Format 1 to 2: the newer columns, and absolute paths."""
    lance = table.table()
    if lance is None:
        return
    full = schema(meta.dim, vectors=True)
    missing = [full.field(name) for name in _FORMAT_2_COLUMNS if name not in lance.schema.names]
    with table.guard("upgrading the pages table"):
        for field in missing:
            lance.add_columns(field)
        for record in catalog.document_records():
            path = Path(record.path)
            if not path.is_absolute() and path.is_file():  # format 1 kept paths as typed
                lance.update(where=f"doc_hash = {sql_string(record.doc_hash)}", values={"path": absolute(path)})


def to_format_3(folder: Path, meta: IndexMeta, table: PageTable) -> CatalogState:
    """Copy a format-1/2 index's vectors into segment files and write its
    catalog log (nothing embedded again); the caller then records format 3."""
    catalog = read_catalog(folder, meta, table, writable=True)
    if meta.format < 2:
        upgrade_columns(meta, table, catalog)
        catalog = read_catalog(folder, meta, table, writable=True)
    shutil.rmtree(folder / CATALOG_DIR, ignore_errors=True)  # a killed upgrade's: done again
    segments = folder / SEGMENTS
    if segments.is_dir():
        for leftover in segments.iterdir():
            if segment_number(leftover.name) is not None:
                leftover.unlink()
    without = table.without_text() if table.table() is not None and "text" in table.table().schema.names else set()
    state = CatalogState(meta.model, meta.dim)
    state.lance_version = table.version
    writer = SegmentWriter(segments, meta.dim, {}, 0)
    try:
        by_doc: dict[str, list[PageRecord]] = {}
        for page in catalog.pages:
            by_doc.setdefault(page.doc_hash, []).append(page)
        for doc_hash, pages in by_doc.items():
            lengths = [p.n_vectors for p in pages]
            vectors = segment(folder, meta, table, doc_hash, sum(lengths))
            extent = writer.append(doc_hash, 1, len(pages), lengths, vectors)
            entry = DocEntry(pages[0].path, len(pages), [(p.n_vectors, p.grid) for p in pages], [extent],
                             doc_hash not in without and meta.text_model is not None)
            state.docs[doc_hash] = entry
            state.paths[entry.path] = doc_hash
    finally:
        writer.close()
    state.ends, state.last_file = dict(writer.ends), writer.last
    CatalogLog.create(folder / CATALOG_DIR, state).close()
    return state


def remove_leftovers(folder: Path, table: PageTable) -> None:
    """After the switch to format 3: the vectors column, ``.npy`` segments and ``catalog.json``."""
    lance = table.table()
    if lance is not None and "vectors" in lance.schema.names:
        with table.guard("dropping the old vectors column"):
            lance.drop_columns(["vectors"])
    segments = folder / SEGMENTS
    if segments.is_dir() and not segments.is_symlink():
        for entry in segments.glob("*.npy"):
            entry.unlink(missing_ok=True)
    (folder / CATALOG).unlink(missing_ok=True)
