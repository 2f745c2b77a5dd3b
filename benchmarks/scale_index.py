"""Index growth: what a commit, the disk and the files cost as an index grows.

    python -m benchmarks.scale_index --pages 1000 10000 [--workdir DIR] [--no-text]

One index is grown through each size in turn (synthetic pages of 600-800
unit vectors x 128, 10 pages a document, about 100 words of text a page,
written through ``IndexStore.add_document`` as ingest does, upkeep
included). With ``--workdir`` the index is kept and a later run continues
from the size it reached. At each size it prints:

- commit: milliseconds of one document's ``add_document`` (median, 95th
  percentile and worst over the commits since the previous size; upkeep
  runs inside some of them, which the worst shows);
- build: seconds spent adding pages so far (this run's and earlier runs');
- disk a page, and its ratio to the raw fp16 vectors plus text and
  metadata (the page table's rows as written);
- files in the index folder, bytes of LanceDB's versions and transactions,
  and of the catalog;
- open: reading the catalog in a fresh store (what every search pays
  before scoring), and one exact search of 20 query vectors from there.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks._table import print_table
from benchmarks.synthetic import DIM, MODEL
from benchmarks.synthetic import pages as synthetic_pages
from ragged.gpu import DeviceManager
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore, StoredPage

DOC_PAGES = 10
WORDS = [f"word{i}" for i in range(3000)] + ["quarterly", "revenue", "notice", "months"]
STATE = "scale_index.json"  # in the workdir: the build's running totals


def du(folder: Path) -> tuple[int, int]:
    """(bytes, files) under ``folder``."""
    sizes = [p.stat().st_size for p in folder.rglob("*") if p.is_file()]
    return sum(sizes), len(sizes)


def text_of(rng: np.random.Generator) -> str:
    return " ".join(WORDS[i] for i in rng.integers(0, len(WORDS), 100))


def grow(index: Path, state: dict[str, float], target: int, text: bool) -> list[float]:
    """Add documents until the index has ``target`` pages; each commit's seconds."""
    times: list[float] = []
    with IndexStore.open_for_writing(index, MODEL) as store:
        done = int(state["pages"])
        rng = np.random.default_rng(done)
        while done < target:
            count = min(DOC_PAGES, target - done)
            vectors = synthetic_pages(rng, count)
            items = [StoredPage(v, None, text_of(rng) if text else None) for v in vectors]
            started = time.perf_counter()
            store.add_document(f"{done:064x}", f"/synthetic/doc{done // DOC_PAGES}.pdf", items)
            times.append(time.perf_counter() - started)
            state["raw"] += sum(v.shape[0] * DIM * 2 for v in vectors)
            state["text"] += sum(len((i.text or "").encode()) + 48 for i in items)  # text and the row's fields
            done += count
        started = time.perf_counter()
        store.finish()
        times.append(time.perf_counter() - started)
    state["pages"] = done
    state["build_s"] += sum(times)
    return times


def measure(index: Path) -> tuple[float, float]:
    """(seconds to read the catalog in a fresh store, seconds for one search from there)."""
    rng = np.random.default_rng(7)
    query = rng.standard_normal((20, DIM)).astype(np.float32)  # (query tokens, dim)
    query /= np.linalg.norm(query, axis=1, keepdims=True)
    started = time.perf_counter()
    store = IndexStore.open(index)
    store.catalog()
    opened = time.perf_counter() - started
    MaxSimSearcher(store, DeviceManager().cpu()).search([query], k=10)
    return opened, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the index here and grow it on later runs")
    parser.add_argument("--no-text", action="store_true", help="pages without text (no full-text index)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        index = work / "index"
        saved = work / STATE
        state = json.loads(saved.read_text()) if saved.is_file() else {"pages": 0, "raw": 0, "text": 0, "build_s": 0}
        measure(index) if state["pages"] else None  # imports and LanceDB's library loaded once, as any process
        rows = []
        for target in sorted(args.pages):
            if target < state["pages"]:
                print(f"{target} pages: the index in {work} already has {int(state['pages'])}; skipped", flush=True)
                continue
            times = grow(index, state, target, not args.no_text)
            saved.write_text(json.dumps(state))
            commits = times[:-1] or times
            total, count = du(index)
            lance = index / "lancedb" / "pages.lance"
            versions = sum(du(lance / name)[0] for name in ("_versions", "_transactions"))
            opened, searched = measure(index)
            per_page = total / state["pages"]
            rows.append((
                f"{int(state['pages']):,}", f"{statistics.median(commits) * 1000:.1f}",
                f"{np.percentile(commits, 95) * 1000:.1f}", f"{max(times) * 1000:.0f}", f"{state['build_s']:.0f}",
                f"{per_page / 1024:.0f}", f"{per_page * state['pages'] / (state['raw'] + state['text']):.3f}",
                f"{count:,}", f"{versions / 2**20:.2f}", f"{du(index / 'catalog')[0] / 2**20:.2f}",
                f"{opened * 1000:.0f}", f"{searched:.2f}"))
            print(f"{target} pages done", flush=True)
        print_table(["pages", "commit p50 ms", "p95 ms", "worst ms", "build s", "disk KiB/page",
                     "disk / (fp16 + text)", "files", "versions MiB", "catalog MiB", "open ms", "open + search s"],
                    rows)


if __name__ == "__main__":
    main()
