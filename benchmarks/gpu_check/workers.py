"""Ingest on Ray with ``--workers auto``: one embedding worker per card.

On the lent machine this checks that ``auto`` starts one worker per
visible card and that each embeds on a card, that every page is stored
exactly once, and how pages per second compare with one process on the
same card. The model is the tiny preset, so the figures are ragged's own
costs (Ray's start-up, moving page images, the single writer), not a
model's speed.

It needs ragged's full install (ray, lancedb, pypdfium2). The GPU
machine's image has none of them, and their wheels (ray's alone is about
79 MB) are more than one call may carry (64 MiB with the tree): there the
section says so and stops. It runs wherever ragged is installed with its
``ray`` extra, and in ``--smoke`` on the CPU (one worker).
"""

from __future__ import annotations

import importlib.util
import time
from collections import Counter
from pathlib import Path

from benchmarks.gpu_check.worker import Context

NEEDS = ("ray", "lancedb", "pypdfium2")
DOCS, PAGES = 8, 6  # on a card: 48 pages
SMOKE_DOCS, SMOKE_PAGES = 2, 2


def run(ctx: Context) -> None:
    missing = [name for name in NEEDS if importlib.util.find_spec(name) is None]
    if missing:
        ctx.rec.md(f"Not run: {', '.join(missing)} not installed here. The GPU machine's image lacks them and "
                   "their wheels exceed what one call may carry; run `python -m benchmarks.gpu_check "
                   "--sections workers` where ragged is installed with its `ray` extra.")
        ctx.rec.data("workers", ran=False, missing=missing)
        return
    docs = _corpus(ctx)
    ctx.rec.table(["run", "workers (device)", "pages stored", "each once", "seconds", "pages/s"])
    one = ctx.attempt("one process", lambda: _ingest(ctx, docs, "single", None))
    many = ctx.attempt("workers auto", lambda: _ingest(ctx, docs, "workers", "auto"))
    if one is None or many is None:
        return
    expected = (SMOKE_DOCS * SMOKE_PAGES) if ctx.smoke else DOCS * PAGES
    workers = many["workers"]
    if not ctx.smoke:
        import torch

        cards = torch.cuda.device_count()
        ctx.rec.check("one worker per card", len(workers) == cards,
                      f"{len(workers)} worker(s) for {cards} visible card(s)")
        ctx.rec.check("workers on cards", all(w.startswith("cuda") for w in workers.values()),
                      ", ".join(f"{k}: {v}" for k, v in workers.items()))
    ctx.rec.check("every page once", many["stored"] == expected and many["once"],
                  f"{many['stored']} of {expected} pages stored, each once: {many['once']}")
    ctx.rec.md("", f"Workers against one process: {many['rate'] / one['rate']:.2f}x the pages per second "
               "(tiny preset: Ray's start-up and transfers dominate; a real model's forward pass does not "
               "shrink with them).")


def _corpus(ctx: Context) -> Path:
    from benchmarks.synthetic import write_pdfs

    docs, pages = (SMOKE_DOCS, SMOKE_PAGES) if ctx.smoke else (DOCS, PAGES)
    return write_pdfs(ctx.work / "workers-docs", docs, pages, text="document {n}")


def _ingest(ctx: Context, docs: Path, name: str, workers: str | None) -> dict[str, object]:
    import shutil

    from ragged.index.store import IndexStore
    from ragged.ingest.distributed import ScaleOptions
    from ragged.ingest.pipeline import IngestOptions, ingest

    index = ctx.work / f"workers-index-{name}"
    shutil.rmtree(index, ignore_errors=True)
    scale = ScaleOptions(workers=None) if workers == "auto" else None
    began = time.perf_counter()
    report = ingest([docs], IngestOptions(index_dir=index, model="tiny-colpali", device=ctx.device, dpi=72,
                                          cache_dir=ctx.cache, text_model="none", scale=scale))
    seconds = time.perf_counter() - began
    counts = Counter((p.doc_hash, p.page) for p in IndexStore.open(index).catalog().pages)
    devices = {w.worker: w.device for w in report.workers} if report.workers else {"in process": report.device}
    rate = report.pages_added / seconds if seconds else 0.0
    ctx.rec.row([name if workers is None else "--workers auto",
                 ", ".join(f"{k} ({v})" for k, v in devices.items()), sum(counts.values()),
                 all(c == 1 for c in counts.values()), f"{seconds:.1f}", f"{rate:.1f}"])
    ctx.rec.data("workers", ran=True, run=name, seconds=seconds, pages=report.pages_added, devices=devices,
                 problems=[str(p) for p in report.problems])
    return {"workers": devices, "stored": sum(counts.values()), "once": all(c == 1 for c in counts.values()),
            "rate": rate}
