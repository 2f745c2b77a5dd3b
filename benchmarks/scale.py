"""Scale-out on Ray: pages per second with 1 and 2 workers, and what one
driver can commit.

    python -m benchmarks.scale [--documents 48] [--pages 4] [--commit-pages 2000]

1. The same synthetic PDFs ingested in this process, then on a local Ray
   cluster with 1 and 2 CPU workers (tiny-colpali, text side on), side by
   side. Embedding time is the wall time from the first batch sent to the
   last result (the cluster and model start-up are reported apart).
2. The driver's commit throughput alone: pages of ColQwen2's shape (about
   750 vectors of 128 dimensions, one text passage) stored through the
   index store with no embedding at all. Divided by one card's embedding
   speed it says how many GPUs one driver can keep busy.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._table import print_table
from benchmarks.synthetic import write_pdfs
from ragged.index.store import IndexStore, StoredPage
from ragged.ingest.distributed import ScaleOptions
from ragged.ingest.pipeline import IngestOptions, ingest

COLQWEN2_PAGES_PER_S_H100 = 30.0  # "tens of pages per second on one H100" (an estimate, not measured here)


def run(docs: Path, index: Path, cache: str, scale: ScaleOptions | None) -> tuple[float, float, int]:
    """(seconds embedding, seconds in all, pages) of one ingest."""
    options = IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=Path(cache), scale=scale)
    start = time.perf_counter()
    report = ingest([docs], options)
    return report.embed_seconds, time.perf_counter() - start, report.pages_added


def commit_throughput(folder: Path, pages: int) -> float:
    """Pages per second the single writer stores, embedding taken out."""
    rng = np.random.default_rng(0)
    page = rng.standard_normal((750, 128)).astype(np.float16)  # (vectors, dim): a ColQwen2 page
    passage = rng.standard_normal((1, 384)).astype(np.float32)
    docs = [[StoredPage(page, None, "quarterly figures", passage) for _ in range(10)] for _ in range(pages // 10)]
    with IndexStore.open_for_writing(folder, "tiny-colpali") as store:
        store.set_text_model("all-MiniLM-L6-v2", 384)
        start = time.perf_counter()
        for n, doc in enumerate(docs):
            store.add_document(f"{n:064x}", f"/bench/doc{n}.pdf", doc)
        seconds = time.perf_counter() - start
    return (len(docs) * 10) / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=48)
    parser.add_argument("--pages", type=int, default=4)
    parser.add_argument("--commit-pages", type=int, default=2000)
    args = parser.parse_args()
    from loguru import logger

    logger.disable("ragged")
    work = Path(tempfile.mkdtemp(prefix="ragged-scale-"))
    cache = os.environ.get("RAGGED_CACHE_DIR") or str(work / "cache")
    docs = write_pdfs(work / "docs", args.documents, args.pages)
    rows = []
    base = None
    for label, scale in (("this process", None), ("1 Ray worker", ScaleOptions(workers=1)),
                         ("2 Ray workers", ScaleOptions(workers=2))):
        embed, total, pages = run(docs, work / label.replace(" ", "-"), cache, scale)
        rate = pages / embed
        base = base or rate
        rows.append((label, pages, f"{embed:.1f} s", f"{rate:.1f}", f"{rate / base:.2f}x", f"{total:.1f} s"))
        print(f"{label}: done", flush=True)
    commit = commit_throughput(work / "commit", args.commit_pages)
    print_table(["run", "pages", "embedding", "pages/s", "vs this process", "in all (start-up included)"], rows)
    print()
    print_table(["driver alone", "result"], [
        ("pages committed per second (ColQwen2-shaped pages, text side on)", f"{commit:.0f}"),
        (f"cards one driver keeps busy at {COLQWEN2_PAGES_PER_S_H100:.0f} pages/s a card",
         f"{commit / COLQWEN2_PAGES_PER_S_H100:.0f}"),
    ])


if __name__ == "__main__":
    main()
