"""A format-2 index written the way ragged 0.5 wrote it (LanceDB rows with
vectors, one ``.npy`` segment a document, ``catalog.json``), for tests of
reading and upgrading old indexes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ragged.index.catalog import Catalog, PageRecord, write_catalog_file
from ragged.index.page_table import lancedb, schema


def build_format_2(folder: Path, docs: dict[str, tuple[str, list[np.ndarray]]], model: str = "org/model",
                   texts: bool = False) -> None:
    """``docs``: hash -> (absolute path, per page (tokens, dim) vectors)."""
    import pyarrow as pa

    dim = int(next(iter(docs.values()))[1][0].shape[1])
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "segments").mkdir()
    table = None
    records = []
    for doc_hash, (path, pages) in docs.items():
        halves = [p.astype(np.float16) for p in pages]
        np.save(folder / "segments" / f"{doc_hash}.npy", np.concatenate(halves))
        flat = pa.array(np.concatenate(halves).reshape(-1), type=pa.float16())
        inner = pa.FixedSizeListArray.from_arrays(flat, dim)
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(h) for h in halves])]).astype(np.int32))
        n = len(pages)
        rows = pa.table({
            "doc_hash": [doc_hash] * n, "path": [path] * n, "page": pa.array(range(1, n + 1), pa.int32()),
            "n_vectors": pa.array([len(h) for h in halves], pa.int32()), "model": [model] * n,
            "vectors": pa.ListArray.from_arrays(offsets, inner, type=pa.list_(pa.list_(pa.float16(), dim))),
            "grid_start": pa.array([None] * n, pa.int32()), "grid_rows": pa.array([None] * n, pa.int32()),
            "grid_cols": pa.array([None] * n, pa.int32()),
            "text": pa.array([f"page {k} of {path} about lemons" if texts else None for k in range(1, n + 1)],
                             pa.string()),
            "text_vectors": pa.array([None] * n, pa.list_(pa.float32())),
        }, schema=schema(dim, vectors=True))
        if table is None:
            table = lancedb().connect(str(folder / "lancedb")).create_table("pages", data=rows,
                                                                          schema=schema(dim, vectors=True))
        else:
            table.add(rows)
        records += [PageRecord(doc_hash, path, k, len(h)) for k, h in enumerate(halves, 1)]
    assert table is not None
    if texts:
        from lancedb.index import FTS

        table.create_index("text", config=FTS())
    write_catalog_file(folder, Catalog.from_pages(records), int(table.version))
    (folder / "ragged-index.json").write_text(json.dumps({"model": model, "dim": dim, "format": 2}))
