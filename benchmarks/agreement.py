"""Agreement of candidate search with exact search, on several corpora.

    python -m benchmarks.agreement --workdir DIR [--corpora synthetic minilm tiny-colpali]
        [--synthetic-pages 10000] [--minilm-pages 4000] [--tiny-documents 40] [--queries 40]
        [--sweep 64 128 256 512]

Each corpus is an index built through ragged (kept in ``--workdir`` and
reused; see :mod:`benchmarks.agreement_corpora` for what each holds and
how its queries relate to its pages). For every query, the top 10 of
exact MaxSim over every page and of candidate search (the stage, then
exact MaxSim of its candidates) are compared: *found* is the share of the
exact top 10 that candidate search returns, *rank 1* how often both put
the same page first. Each setting of the first round (``--sweep``) is run
with the stage's self-check (the probe that widens the candidates where
the stage underrates pages) and without it (``probe 0``). Times are
medians per query, exact and candidates interleaved, one query at a time,
after the index is opened once (the page cache warm).
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np

from benchmarks import agreement_corpora as corpora
from benchmarks._table import print_table
from ragged.gpu import DeviceManager, Runtime
from ragged.index import candidates
from ragged.index.search import MaxSimSearcher, SegmentSource
from ragged.index.store import IndexStore


def measure(index: Path, queries: list[np.ndarray], first: int, probe: int) -> dict[str, float]:
    """Agreement and times of one setting over ``queries``."""
    candidates.CANDIDATES, candidates.PROBE = first, probe
    runtime = Runtime(DeviceManager())
    store = IndexStore.open(index)
    searcher = MaxSimSearcher(SegmentSource(store), runtime.device("cpu"), runtime)
    pages = len(searcher.catalog.pages)
    found, same, scored, exact_s, cand_s = [], [], [], [], []
    for query in queries:
        started = time.perf_counter()
        exact = searcher.search([query], 10)[0]
        exact_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        scores = searcher.score_candidates([query], 10)[:, 0]  # (pages,): -inf where not scored
        cand = searcher.search([query], 10, exact=False)[0]
        cand_s.append((time.perf_counter() - started) / 2)  # the two calls cost the same
        scored.append(int(np.isfinite(scores).sum()))
        truth = {(h.doc_hash, h.page) for h in exact}
        found.append(len(truth & {(h.doc_hash, h.page) for h in cand}) / len(truth))
        same.append((exact[0].doc_hash, exact[0].page) == (cand[0].doc_hash, cand[0].page))
    return {"pages": pages, "found": float(np.mean(found)), "worst": float(np.min(found)),
            "rank1": float(np.mean(same)), "scored": statistics.median(scored), "most": max(scored),
            "exact_s": statistics.median(exact_s), "cand_s": statistics.median(cand_s),
            "vectors": searcher.catalog.total_vectors / max(pages, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="where the corpora's indexes are kept")
    parser.add_argument("--corpora", nargs="+", default=["synthetic", "minilm", "tiny-colpali"])
    parser.add_argument("--synthetic-pages", type=int, default=10_000)
    parser.add_argument("--minilm-pages", type=int, default=4_000)
    parser.add_argument("--tiny-documents", type=int, default=40, help="10-page documents per tiny preset")
    parser.add_argument("--queries", type=int, default=40)
    parser.add_argument("--sweep", type=int, nargs="+", default=[candidates.CANDIDATES])
    args = parser.parse_args()
    default_first, default_probe = candidates.CANDIDATES, candidates.PROBE
    rows = []
    for name in args.corpora:
        folder = args.workdir / name
        if name == "synthetic":
            queries, index = corpora.synthetic(folder, args.synthetic_pages, args.queries), folder
        elif name == "minilm":
            queries, index = corpora.minilm(folder, args.minilm_pages, args.queries), folder / "index"
        else:
            queries, index = corpora.rendered(folder, name, args.tiny_documents, args.queries), folder / "index"
        width = int(queries[0].shape[1])
        for first in args.sweep:
            for probe in (default_probe, 0):
                r = measure(index, queries, first, probe)
                rows.append((name, f"{int(r['pages']):,}", f"{r['vectors']:.0f} x {width}", len(queries), first,
                             probe, f"{r['found']:.4f}", f"{r['worst']:.1f}", f"{r['rank1']:.3f}",
                             f"{int(r['scored']):,} ({r['scored'] / r['pages']:.1%})", f"{int(r['most']):,}",
                             f"{r['exact_s'] * 1000:.0f}", f"{r['cand_s'] * 1000:.0f}"))
                print(f"{name} first {first} probe {probe} done", flush=True)
    candidates.CANDIDATES, candidates.PROBE = default_first, default_probe
    print_table(["corpus", "pages", "vectors a page", "queries", "first round", "probe", "found", "worst",
                 "rank 1", "pages scored (median)", "most", "exact ms", "candidates ms"], rows)


if __name__ == "__main__":
    main()
