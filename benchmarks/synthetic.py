"""Synthetic indexes and documents for the benchmarks.

Pages of 600-800 unit vectors of 128 dimensions (fixed seed), stored by
ragged's own index store under the ``tiny-colpali`` preset's name, so a
server can embed real queries against them (their scores mean nothing).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ragged.index.store import IndexStore

DIM = 128
DOC_PAGES = 100
MODEL = "tiny-colpali"


def pages(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` pages of unit vectors, each (600-800, DIM) float32."""
    out = []
    for n in rng.integers(600, 801, count):
        v = rng.standard_normal((int(n), DIM)).astype(np.float32)  # (n, dim)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


def build_index(folder: Path, count: int, seed: int = 0) -> Path:
    """An index of ``count`` synthetic pages in documents of 100 (reused if present)."""
    if IndexStore.read_meta(folder) is not None and len(IndexStore.open(folder).catalog().pages) == count:
        return folder
    rng = np.random.default_rng(seed)
    with IndexStore.open_for_writing(folder, MODEL) as store:
        for start in range(0, count, DOC_PAGES):
            store.add_document(f"{seed:032x}{start:032x}", f"/synthetic/doc{start // DOC_PAGES}.pdf",
                               pages(rng, min(DOC_PAGES, count - start)))
    return folder


def write_pdfs(folder: Path, documents: int, pages: int, text: str = "document {n} quarterly revenue") -> Path:
    """``documents`` PDFs of ``pages`` letter pages each, with a text layer
    (``text``, formatted with the document number ``n``), in ``folder``."""
    from tests.inputs import blank_pdf

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        (folder / f"doc{n:03d}.pdf").write_bytes(blank_pdf(pages, 612, 792, text=text.format(n=n)))
    return folder
