"""Real OOM recovery on capped cards, asserted.

For each model, a batch-of-one reference on the whole card measures the
weights and the largest one-page batch. The card is then capped (with
``torch.cuda.set_per_process_memory_fraction``) at the weights plus three
times that batch's need, rounded up to 1/4 GiB: one page fits, every page
at once does not. A fixed batch of every page, with recovery on (but no CPU
fallback, which cannot finish in time for 2 B parameters), must run out of
memory for real, recover, and return every page matching the reference;
the check fails if no OOM happened. An adaptive run at the same cap, free
to take every page at once, shows whether sizing avoids the OOM.
"""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.full_size import BUILDS
from benchmarks.gpu_check.probe import (
    FULL,
    GIB,
    Cap,
    Meter,
    RunSpec,
    embed,
    gib,
    max_rel_diff,
    new_embedder,
    outside_allocator,
    pages,
    release,
)
from benchmarks.gpu_check.worker import Context
from ragged.gpu import BatchSizeConfig
from ragged.gpu.runtime import Runtime

HEADROOM = 3  # the cap leaves room for this many one-page batches above the weights
SMOKE_CAP_PAGES = 1
SMOKE_SCALE = 0.15  # small pages: few tokens on the CPU
MAX_PAGES = 16
SMOKE_PAGES = 2  # one more than the emulated card takes
HEADERS = ["model", "run", "card", "pages back", "OOMs seen / reported by ragged", "recoveries", "batch sizes",
           "peak GiB (of card)", "max rel. diff vs batch 1"]


def run(ctx: Context) -> None:
    n = min(ctx.pages, SMOKE_PAGES if ctx.smoke else MAX_PAGES)
    imgs = pages(n, seed=1, scale=SMOKE_SCALE if ctx.smoke else 1.0)
    card = f" (--smoke: a card of {SMOKE_CAP_PAGES} page per forward, emulated)" if ctx.smoke else ""
    ctx.rec.md(f"{n} pages of mixed sizes: a batch-of-one reference on the whole card, then on a card capped at "
               f"the weights + {HEADROOM} x the largest one-page batch, rounded up to 1/4 GiB{card}, a fixed batch "
               f"of all {n} with recovery on (no CPU fallback), which must run out of memory, and an adaptive run "
               "free to take them all. Peaks are the allocator's, weights included; the CUDA context sits outside "
               "the cap.", "")
    ctx.rec.table(HEADERS)
    for name in reversed(list(BUILDS)):  # the small model first: its figures come back even if the big one fails
        if ctx.time_left() <= 0:
            ctx.rec.row([name, "skipped: time limit", *["-"] * (len(HEADERS) - 2)])
            continue
        ctx.attempt(name, partial(_model, ctx, name, imgs))


def _model(ctx: Context, name: str, imgs: list[Image.Image]) -> None:
    folder = ctx.model_dir(name)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"{name} was not built (see the build section)")
    meter = Meter()
    with Runtime() as held:
        FULL.apply(meter)
        run_one = partial(_run, ctx, held, folder, meter, imgs)
        ref = ctx.attempt(f"{name} reference", partial(run_one, RunSpec("batch 1 (reference)", False, 1), True))
        if ref is None or ref["status"] != "ok":
            ctx.rec.row([name, "batch 1 (reference) failed", *["-"] * (len(HEADERS) - 2)])
            return
        _row(ctx, name, ref, FULL, None)
        cap = _cap(ref, ctx.smoke)
        ctx.rec.data("cap", model=name, weights_bytes=ref["weights_bytes"], one_page_bytes=_one_page(ref),
                     cap_bytes=cap.bytes, outside_allocator_bytes=outside_allocator())
        try:
            cap.apply(meter)
            n = len(imgs)
            if ctx.time_left() <= 0:
                ctx.rec.row([name, "capped runs skipped: time limit", *["-"] * (len(HEADERS) - 2)])
                return
            forced = ctx.attempt(f"{name} forced", partial(run_one, RunSpec(f"fixed {n}, recovery on", False, n), True))
            if forced is not None:
                _row(ctx, name, forced, cap, ref)
                _judge(ctx, name, forced, ref, 1e-3 if ctx.smoke else 0.1)
            config = BatchSizeConfig(initial_batch_size=n, max_batch_size=n)
            adaptive = ctx.attempt(f"{name} adaptive",
                                   partial(run_one, RunSpec(f"adaptive (up to {n})", True, n, config=config), True))
            if adaptive is not None:
                _row(ctx, name, adaptive, cap, ref)
        finally:
            FULL.apply(meter)


def _run(ctx: Context, held: Runtime, folder: Path, meter: Meter, imgs: list[Image.Image], spec: RunSpec,
         keep: bool) -> dict[str, Any]:
    emb = new_embedder(spec, held, folder, ctx.cache, ctx.device)
    result = embed(spec, emb, meter, imgs, keep=keep)
    del emb
    release()
    ctx.rec.emit("run", **{k: v for k, v in result.items() if k != "embeddings"})
    return result


def _one_page(ref: dict[str, Any]) -> int:
    return max((b["peak_bytes"] - ref["weights_bytes"] for b in ref["batches"]), default=0)


def _cap(ref: dict[str, Any], smoke: bool) -> Cap:
    if smoke:
        return Cap(f"{SMOKE_CAP_PAGES} page (emulated)", None, SMOKE_CAP_PAGES)
    quarter = GIB // 4
    size = math.ceil((ref["weights_bytes"] + HEADROOM * _one_page(ref)) / quarter) * quarter
    return Cap(f"{size / GIB:.2f} GiB", size)


def _diff(got: dict[str, Any], ref: dict[str, Any] | None) -> float | None:
    if ref is None or "embeddings" not in got:
        return None
    a, b = got["embeddings"], ref["embeddings"]
    if [x.shape for x in a] != [y.shape for y in b]:
        return float("inf")
    return max_rel_diff(a, b)


def _row(ctx: Context, name: str, res: dict[str, Any], cap: Cap, ref: dict[str, Any] | None) -> None:
    n = res["pages"]
    of = cap.of()
    peak = f"{gib(res['peak_bytes'])} ({100 * res['peak_bytes'] / of:.0f}%)" if of else "-"
    diff = _diff(res, ref)
    if res["status"] != "ok":
        ctx.rec.row([name, res["label"], cap.label, f"0/{n}: {res['error'][:80]}", f"{res['ooms_seen']} / -",
                     "-", "-", peak, "-"])
        return
    recoveries = ", ".join(f"{k} {v}" for k, v in res["recoveries"].items()) or "-"
    sizes = ",".join(map(str, sorted(set(res["batch_sizes"]))))
    ctx.rec.row([name, res["label"], cap.label, f"{res['pages_back']}/{n}",
                 f"{res['ooms_seen']} / {res['ooms_reported']}", recoveries, sizes, peak,
                 "-" if diff is None else f"{diff:.1e}"])


def _judge(ctx: Context, name: str, forced: dict[str, Any], ref: dict[str, Any], limit: float) -> None:
    n = forced["pages"]
    if forced["status"] != "ok":
        ctx.rec.check(f"{name} recovery", False, f"recovery failed: {forced['error'][:300]}")
        return
    # ragged counts every OOM it recovered from; the meter sees those inside the forward (not, say, in
    # moving the inputs to the card), an independent confirmation that they were real.
    happened = forced["ooms_reported"] >= 1
    ctx.rec.check(f"{name} forced OOM", happened,
                  f"a batch of {n} ran out of memory: ragged recovered from {forced['ooms_reported']} OOM(s), "
                  f"{forced['ooms_seen']} seen inside the forward" if happened else
                  f"no OOM at a batch of {n} ({forced['ooms_seen']} seen): the cap was not tight enough, "
                  "recovery was not exercised")
    ctx.rec.check(f"{name} pages back", forced["pages_back"] == n, f"{forced['pages_back']} of {n} pages")
    diff = _diff(forced, ref)
    ctx.rec.check(f"{name} matches batch 1", diff is not None and diff <= limit,
                  f"max relative difference {diff:.1e} (limit {limit:g})")

