"""Search latency: ragged's exact MaxSim against LanceDB's own multivector search.

    python -m benchmarks.search [--pages 1000 10000] [--queries 3]

Synthetic pages of 600-800 unit vectors of 128 dimensions (fixed seed),
queries of 20 vectors. ragged's time is end to end from opening the index
folder (catalog log read, memory-mapped fp16 segment files, scoring),
as one ``ragged search`` call pays it, without embedding the query and
without importing the libraries (done once before timing). LanceDB's is
its flat multivector search with cosine distance on a float32 table (its
faster layout; fp16 measured about 3x slower, see environment notes).
Both top-10 lists are compared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._table import print_table
from benchmarks.synthetic import DIM, DOC_PAGES
from benchmarks.synthetic import pages as synthetic_pages
from ragged.gpu import DeviceManager, Runtime
from ragged.index.page_table import lancedb as _lancedb
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore


def build(folder: Path, pages: int, seed: int) -> tuple[list[int], object]:
    """A ragged index and a LanceDB float32 multivector table of the same pages."""
    import pyarrow as pa

    rng = np.random.default_rng(seed)
    store = IndexStore.open_for_writing(folder / "ragged", "synthetic/maxsim")
    db = _lancedb().connect(str(folder / "lance"))
    table = None
    ids: list[int] = []
    for start in range(0, pages, DOC_PAGES):
        batch = synthetic_pages(rng, min(DOC_PAGES, pages - start))
        store.add_document(f"{start:064x}", f"doc{start // DOC_PAGES}.pdf", batch)
        flat = pa.array(np.concatenate(batch).reshape(-1), type=pa.float32())
        inner = pa.FixedSizeListArray.from_arrays(flat, DIM)
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(b) for b in batch])]).astype(np.int32))
        rows = pa.table({"id": pa.array(range(start, start + len(batch)), pa.int32()),
                         "vector": pa.ListArray.from_arrays(offsets, inner)})
        if table is None:
            table = db.create_table("pages", data=rows)
        else:
            table.add(rows)
        ids.extend(range(start, start + len(batch)))
    store.close()
    return ids, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--queries", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="keep the built indexes here and reuse them")
    args = parser.parse_args()
    rows = []
    for pages in args.pages:
        with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
            folder = args.workdir / str(pages) if args.workdir else Path(tmp)
            began = time.perf_counter()
            if (folder / "ragged" / "ragged-index.json").is_file():
                table = _lancedb().connect(str(folder / "lance")).open_table("pages")
                build_text = "reused"
            else:
                _, table = build(folder, pages, seed=pages)
                build_text = f"{time.perf_counter() - began:.0f} s"
            IndexStore.open(folder / "ragged").catalog()  # load LanceDB's library once, as any process must
            rng = np.random.default_rng(7)
            ours, theirs, same = [], [], []
            for _ in range(args.queries):
                q = rng.standard_normal((20, DIM)).astype(np.float32)  # (query tokens, dim)
                q /= np.linalg.norm(q, axis=1, keepdims=True)
                start = time.perf_counter()
                runtime = Runtime(DeviceManager())
                searcher = MaxSimSearcher(IndexStore.open(folder / "ragged"), runtime.device("cpu"), runtime)
                hits = searcher.search([q], k=10)[0]
                ours.append(time.perf_counter() - start)
                start = time.perf_counter()
                result = table.search(q).distance_type("cosine").limit(10).to_arrow()  # type: ignore[attr-defined]
                theirs.append(time.perf_counter() - start)
                ours_ids = [int(h.doc_hash, 16) + h.page - 1 for h in hits]
                same.append(ours_ids == result.column("id").to_pylist())
            r, lance = statistics.median(ours), statistics.median(theirs)
            rows.append((pages, build_text, f"{r:.2f} s", f"{lance:.2f} s", f"{lance / r:.1f}x",
                         "yes" if all(same) else f"{sum(same)}/{len(same)}"))
            print(f"{pages} pages done", flush=True)
    print_table(["pages", "build", "ragged (open + search)", "LanceDB own search", "speed-up",
                 "identical top-10"], rows)


if __name__ == "__main__":
    main()
