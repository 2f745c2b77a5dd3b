"""Index growth and search at scale: commits, disk, search, serving, agreement and peers.

    python -m benchmarks.scale_index --pages 1000 10000 30000 100000 --workdir DIR
        [--queries 20] [--serve-queries 40] [--lance-pages 2000] [--qdrant-pages 500] [--no-search]

One index is grown through each size in turn (structured synthetic pages
of 600-800 unit vectors x 128, :func:`benchmarks.synthetic.topic_page`,
10 pages a document, about 100 words of text a page, written through
``IndexStore.add_document`` as ingest does, upkeep and the candidate
stage included). With ``--workdir`` the index is kept and a later run
continues from the size it reached. At each size it prints:

- commit: milliseconds of one document's ``add_document`` (median, 95th
  percentile and worst over the commits since the previous size; upkeep
  runs inside some of them, which the worst shows);
- build: seconds spent adding pages so far (this run's and earlier runs');
- disk a page, and its ratio to the raw fp16 vectors plus text and
  metadata; the candidate stage's bytes a page on disk and in memory;
- files, LanceDB's versions, the catalog; reading the catalog in a fresh
  store;
- search (see :mod:`benchmarks.scale_search`): in-process exact and
  candidate search of ``--queries`` queries about random pages (agreement
  of the top 10 beside the times), a fresh process, ``ragged serve``
  (p50/p95, its form and memory), LanceDB and Qdrant on the first pages.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks import scale_search as measure_search
from benchmarks._table import print_table
from benchmarks.synthetic import DIM, MODEL, topic_page, topic_query
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
            vectors = [topic_page(n) for n in range(done, done + count)]
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


def opened(index: Path) -> float:
    """Seconds to read the catalog in a fresh store."""
    started = time.perf_counter()
    IndexStore.open(index).catalog()
    return time.perf_counter() - started


def stage_bytes(index: Path) -> tuple[float, float]:
    """The candidate stage's bytes a page: (on disk, fp16; in memory, f32)."""
    catalog = IndexStore.open(index).catalog()
    pooled = sum(e.vectors for extents in catalog.pooled.values() for e in extents)
    pages = max(len(catalog.pages), 1)
    return pooled * DIM * 2 / pages, pooled * DIM * 4 / pages


def growth_row(index: Path, state: dict[str, float], times: list[float]) -> tuple[str, ...]:
    commits = times[:-1] or times
    total, count = du(index)
    lance = index / "lancedb" / "pages.lance"
    versions = sum(du(lance / name)[0] for name in ("_versions", "_transactions"))
    per_page = total / state["pages"]
    disk, memory = stage_bytes(index)
    return (f"{int(state['pages']):,}", f"{statistics.median(commits) * 1000:.1f}",
            f"{np.percentile(commits, 95) * 1000:.1f}", f"{max(times) * 1000:.0f}", f"{state['build_s']:.0f}",
            f"{per_page / 1024:.0f}", f"{per_page * state['pages'] / (state['raw'] + state['text']):.3f}",
            f"{disk / 1024:.1f} / {memory / 1024:.1f}", f"{count:,}", f"{versions / 2**20:.2f}",
            f"{du(index / 'catalog')[0] / 2**20:.2f}", f"{opened(index) * 1000:.0f}")


def search_rows(index: Path, work: Path, args: argparse.Namespace, cache: str) -> list[tuple[str, ...]]:
    pages = len(IndexStore.open(index).catalog().pages)
    rng = np.random.default_rng(pages)
    targets = rng.integers(0, pages, args.queries)
    queries = [topic_query(int(n), seed=1) for n in targets]
    label = f"{pages:,}"
    rows: list[tuple[str, ...]] = []
    own = measure_search.in_process(index, queries)
    rows.append((label, "ragged, in process", f"{own['cand_s']:.3f}", f"{own['exact_s']:.2f}",
                 f"{own['found']:.4f}", f"{own['rank1']:.3f}", measure_search.environment()))
    print(f"{label}: in process done", flush=True)
    fresh = [measure_search.fresh_process(index, int(n)) for n in targets[:3]]
    fresh_exact = measure_search.fresh_process(index, int(targets[0]), exact=True)
    rows.append((label, "ragged, fresh process, after imports (open + search)", f"{statistics.median(fresh):.2f}",
                 f"{fresh_exact:.2f}", "-", "-", measure_search.environment()))
    if hasattr(os, "posix_fadvise"):  # dropping the index from the page cache needs it (Linux)
        cold = [(measure_search.fresh_process(index, int(n), cold=True),
                 measure_search.fresh_process(index, int(n), cold=True, hints=False)) for n in targets[:3]]
        rows.append((label, "ragged, fresh process, page cache dropped first: read-ahead hints / none",
                     f"{statistics.median(c for c, _ in cold):.2f} / {statistics.median(c for _, c in cold):.2f}",
                     "-", "-", "-", measure_search.environment()))
    cli = [measure_search.cli_search(index, cache, q) for q in measure_search.TEXT_QUERIES[:3]]
    cli_exact = measure_search.cli_search(index, cache, measure_search.TEXT_QUERIES[0], exact=True)
    rows.append((label, "`ragged search --local` (wall / after imports, text query)",
                 f"{statistics.median(w for w, _ in cli):.2f} / {statistics.median(s for _, s in cli):.2f}",
                 f"{cli_exact[0]:.2f} / {cli_exact[1]:.2f}", "-", "-", measure_search.environment()))
    print(f"{label}: fresh processes done", flush=True)
    if not args.no_serve:
        planted = measure_search.plant_answers(index, cache, measure_search.served_queries(args.serve_queries))
        if planted:
            print(f"{label}: planted {planted} pages that answer the server's queries", flush=True)
        served = measure_search.serve(index, cache, args.serve_queries, args.exact_queries)
        memory = served["memory"]
        rows.append((label, f"`ragged serve` p50 / p95 ({args.serve_queries} queries that pages answer; "
                            f"pages scored, median: {served['scored']})",
                     f"{served['p50']:.3f} / {served['p95']:.3f}",
                     f"{served['exact_p50']:.2f}" if served["exact_p50"] is not None else "-",
                     f"{served['found']:.4f} planted" if served["found"] is not None else "-", "-",
                     measure_search.environment()))
        print(f"{label}: server {served['start_line']}", flush=True)
        print(f"{label}: server form {served['form']!r} ({served['reason']}); ready in {served['ready_s']:.1f} s; "
              f"RSS {memory.get('VmRSS', 0) / 2**30:.2f} GiB (anonymous {memory.get('RssAnon', 0) / 2**30:.2f}, "
              f"file-backed {memory.get('RssFile', 0) / 2**30:.2f}), peak {memory.get('VmHWM', 0) / 2**30:.2f} GiB, "
              f"swap {memory.get('VmSwap', 0)}; pages scored exactly a query (median) {served['scored']}", flush=True)
    if args.lance_pages:
        subset = min(args.lance_pages, pages)
        sub_queries = [topic_query(int(n), seed=2) for n in rng.integers(0, subset, min(args.queries, 10))]
        ours = measure_search.in_process(index, sub_queries, subset)
        lance_s, lance_top = measure_search.lance_peer(work / f"lance-{subset}", subset, sub_queries)
        truth = [measure_search.page_numbers(h, ours["catalog"]) for h in ours["exact"]]
        found = np.mean([len(set(t) & set(x)) / 10 for t, x in zip(truth, lance_top, strict=True)])
        first = np.mean([t[0] == x[0] for t, x in zip(truth, lance_top, strict=True)])
        rows.append((f"{subset:,} (subset)", "ragged, in process", f"{ours['cand_s']:.3f}", f"{ours['exact_s']:.2f}",
                     f"{ours['found']:.4f}", f"{ours['rank1']:.3f}", measure_search.environment()))
        rows.append((f"{subset:,} (subset)", "LanceDB's own search (flat, f32 table)", "-", f"{lance_s:.2f}",
                     f"{found:.4f}", f"{first:.3f}", measure_search.environment()))
        if args.qdrant_pages:
            few = min(args.qdrant_pages, subset)
            q_queries = [topic_query(int(n), seed=3) for n in rng.integers(0, few, min(args.queries, 10))]
            ours = measure_search.in_process(index, q_queries, few)
            q_s, q_top, peak = measure_search.qdrant_peer(few, q_queries)
            truth = [measure_search.page_numbers(h, ours["catalog"]) for h in ours["exact"]]
            found = np.mean([len(set(t) & set(x)) / 10 for t, x in zip(truth, q_top, strict=True)])
            first = np.mean([t[0] == x[0] for t, x in zip(truth, q_top, strict=True)])
            rows.append((f"{few:,} (subset)", "ragged, in process", f"{ours['cand_s']:.3f}",
                         f"{ours['exact_s']:.2f}", f"{ours['found']:.4f}", f"{ours['rank1']:.3f}",
                         measure_search.environment()))
            rows.append((f"{few:,} (subset)", f"Qdrant local, pooled prefetch 200 + MaxSim (peak RSS "
                         f"{peak / 2**30:.1f} GiB)", f"{q_s:.3f}", "-", f"{found:.4f}", f"{first:.3f}",
                         measure_search.environment()))
        print(f"{label}: peers done", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--workdir", type=Path, default=None, help="keep the index here and grow it on later runs")
    parser.add_argument("--no-text", action="store_true", help="pages without text (no full-text index)")
    parser.add_argument("--no-search", action="store_true", help="growth only")
    parser.add_argument("--no-serve", action="store_true", help="no server measurement")
    parser.add_argument("--queries", type=int, default=20, help="in-process queries (agreement) at each size")
    parser.add_argument("--serve-queries", type=int, default=40)
    parser.add_argument("--exact-queries", type=int, default=2, help="server queries with exact: true")
    parser.add_argument("--search-from", type=int, default=10_000, help="search measured from this size up")
    parser.add_argument("--lance-pages", type=int, default=2000, help="LanceDB on the first pages (0: none)")
    parser.add_argument("--qdrant-pages", type=int, default=500, help="Qdrant on the first pages (0: none)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.workdir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        cache = str(work / "cache")
        index = work / "index"
        saved = work / STATE
        state = json.loads(saved.read_text()) if saved.is_file() else {"pages": 0, "raw": 0, "text": 0, "build_s": 0}
        if state["pages"]:
            opened(index)  # LanceDB's library and the catalog code loaded once, as in any process
        growth, search = [], []
        for target in sorted(args.pages):
            if target < state["pages"]:
                print(f"{target} pages: the index in {work} already has {int(state['pages'])}; skipped", flush=True)
                continue
            if target > state["pages"]:
                times = grow(index, state, target, not args.no_text)
                saved.write_text(json.dumps(state))
                growth.append(growth_row(index, state, times))
                print(f"{target} pages grown: {' | '.join(growth[-1])}", flush=True)
            if not args.no_search and target >= args.search_from:
                measured = search_rows(index, work, args, cache)
                search.extend(measured)
                for row in measured:
                    print(" | ".join(row), flush=True)
        print_table(["pages", "commit p50 ms", "p95 ms", "worst ms", "build s", "disk KiB/page",
                     "disk / (fp16 + text)", "stage KiB/page disk / RAM", "files", "versions MiB", "catalog MiB",
                     "open ms"], growth)
        if search:
            print()
            print_table(["pages", "search", "candidates s", "exact s", "top-10 found", "same rank 1",
                         "load average"], search)


if __name__ == "__main__":
    main()
