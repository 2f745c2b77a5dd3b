"""Adaptive batching against fixed batch sizes, like with like.

ColQwen2 at full size in bf16 on mixed pages, at an 8 GiB cap and on the
whole card. Each fixed size runs twice: in input order (a plain loop) and
sorted by sequence length (what adaptive batching does itself), so the
tables separate what sizing brings from what less padding brings. Fixed
sizes run without recovery (an OOM is reported as such); adaptive runs
with recovery (no CPU fallback), once with preprocessing prefetched (the
default on a GPU) and once without. After a warm-up, repetitions
interleave the caps and the runs, reversed every other time, while time
allows; figures are medians over repetitions.
"""

from __future__ import annotations

import time
from collections import defaultdict
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from benchmarks.gpu_check.probe import (
    FULL,
    GIB,
    Cap,
    Meter,
    RunSpec,
    cuda,
    embed,
    gib,
    med,
    new_embedder,
    outside_allocator,
    page_tokens,
    pages,
)
from benchmarks.gpu_check.worker import Context
from ragged.embeddings import ColPaliEmbedder
from ragged.gpu import BatchSizeConfig
from ragged.gpu.runtime import Runtime

MODEL = "colqwen2-2b"
FIXED = (1, 2, 4, 8, 16, 32)
SMOKE_FIXED = (2, 4)  # at the emulated 8 GiB cap (2 pages), 4 runs out of memory
CAPS = (Cap("8 GiB", 8 * GIB, smoke_pages=2), FULL)
ADAPTIVE = BatchSizeConfig(max_batch_size=64)
WARMUP_PAGES = 8
SMOKE_SCALE = 0.15  # small pages: few tokens on the CPU


def specs(smoke: bool) -> list[RunSpec]:
    """The runs of one repetition at one cap."""
    out = [RunSpec(f"fixed {size}", False, size, order=order, recover=False)
           for size in (SMOKE_FIXED if smoke else FIXED) for order in ("input", "sorted")]
    out.append(RunSpec("adaptive", True, None, order="by ragged", config=ADAPTIVE))
    out.append(RunSpec("adaptive, no prefetch", True, None, order="by ragged", prefetch=False, config=ADAPTIVE))
    return out


class Sweep:
    """The state of one sweep: loaded model, pages in both orders, fixed embedders."""

    def __init__(self, ctx: Context, held: Runtime, folder: Path, imgs: list[Image.Image]) -> None:
        self.ctx, self.held, self.folder = ctx, held, folder
        self.imgs = imgs
        self.sorted_imgs = imgs
        self.meter = Meter()
        self.fixed: dict[int, ColPaliEmbedder] = {}
        self.results: list[dict[str, Any]] = []
        self.durations: dict[str, list[float]] = defaultdict(list)

    def embedder(self, spec: RunSpec) -> ColPaliEmbedder:
        """A fresh embedder for adaptive runs (its sizer starts from nothing); one per fixed size."""
        if spec.adaptive:
            return new_embedder(spec, self.held, self.folder, self.ctx.cache, self.ctx.device)
        assert spec.batch is not None
        if spec.batch not in self.fixed:
            self.fixed[spec.batch] = new_embedder(spec, self.held, self.folder, self.ctx.cache, self.ctx.device)
        return self.fixed[spec.batch]

    def one(self, spec: RunSpec, imgs: list[Image.Image] | None = None) -> dict[str, Any]:
        chosen = imgs if imgs is not None else (self.sorted_imgs if spec.order == "sorted" else self.imgs)
        return embed(spec, self.embedder(spec), self.meter, chosen)

    def warm_up(self) -> None:
        """Untimed runs (kernels, allocator, caches), then the sorted order and the setting."""
        began = time.monotonic()
        FULL.apply(self.meter)
        first = RunSpec("warm-up fixed 4", False, 4, recover=False)
        weights = self.one(first, self.imgs[:WARMUP_PAGES])["weights_bytes"]
        self.one(RunSpec("warm-up adaptive", True, None, config=ADAPTIVE), self.imgs[:WARMUP_PAGES])
        processor = self.embedder(first).processor
        tokens = page_tokens(processor, self.imgs)
        self.sorted_imgs = [self.imgs[i] for i in sorted(range(len(self.imgs)), key=lambda i: -tokens[i])]
        outside = outside_allocator()
        kind = type(getattr(processor, "image_processor", None)).__name__
        self.ctx.rec.data("setting", warmup_s=time.monotonic() - began, tokens=tokens, weights_bytes=weights,
                          outside_allocator_bytes=outside, image_processor=kind)
        memory = (f"weights {gib(weights)} GiB; outside the allocator (CUDA context, libraries, other processes) "
                  f"{gib(outside)} GiB, which no cap includes: a real card of the cap's size has that much less"
                  if cuda() else "memory is not measured on the CPU")
        self.ctx.rec.md(f"{len(self.imgs)} pages of {min(tokens)}-{max(tokens)} tokens; {memory}. Image processor: "
                        f"{kind}. Warm-up: {time.monotonic() - began:.0f} s. Adaptive runs are compared with fixed "
                        "sizes on sorted pages (adaptive batching sorts them itself).", "")

    def repetitions(self) -> None:
        """Interleaved repetitions while time allows."""
        last_rep = 0.0
        for rep in range(self.ctx.reps):
            if rep and self.ctx.time_left() < 1.1 * last_rep:
                self.ctx.rec.md(f"(Stopped after {rep} repetition(s): the next would pass the deadline.)", "")
                return
            began = time.monotonic()
            flip = rep % 2 == 1
            for cap in CAPS[::-1] if flip else CAPS:
                cap.apply(self.meter)
                for spec in specs(self.ctx.smoke)[::-1] if flip else specs(self.ctx.smoke):
                    if not self.run(spec, cap, rep + 1):
                        return
            last_rep = time.monotonic() - began

    def run(self, spec: RunSpec, cap: Cap, rep: int) -> bool:
        """One timed run; False when the deadline stops the sweep."""
        key = f"{cap.label} | {spec.label} | {spec.order}"
        every = [d for ds in self.durations.values() for d in ds]
        guess = med(self.durations[key]) if self.durations[key] else (med(every) if every else 0.0)
        if self.results and self.ctx.time_left() < 1.2 * guess + 1:
            self.ctx.rec.md(f"(Stopped in repetition {rep} before {key}: time limit.)", "")
            return False
        began = time.monotonic()
        res = self.ctx.attempt(f"{key} rep {rep}", partial(self.one, spec))
        self.durations[key].append(time.monotonic() - began)
        res = res or {"label": spec.label, "order": spec.order, "status": "error", "adaptive": spec.adaptive}
        res.update(cap=cap.label, cap_bytes=cap.of(), rep=rep)
        self.results.append(res)
        self.ctx.rec.emit("run", **res)
        print(f"  {key} rep {rep}: {res['status']} {res.get('pages_per_s', 0):.2f} pages/s, "
              f"model {res.get('model_s', 0):.2f} s, prepare {res.get('prepare_s', 0):.2f} s", flush=True)
        return True


def run(ctx: Context) -> None:
    folder = ctx.model_dir(MODEL)
    if not (folder / "config.json").is_file():
        raise RuntimeError(f"{MODEL} was not built (see the build section)")
    imgs = pages(ctx.pages, seed=2, scale=SMOKE_SCALE if ctx.smoke else 1.0)
    ctx.rec.md(f"ColQwen2 (2.2 B parameters{'; --smoke: one layer per tower, small vocabulary' if ctx.smoke else ''}), "
               f"{'float32 on the CPU, caps emulated' if ctx.smoke else 'bf16'}; caps set with "
               "`torch.cuda.set_per_process_memory_fraction`. Pages/s is wall clock; *model* is the time "
               "inside the forward passes (GPU), *prepare* the preprocessing (CPU, overlapped with the model "
               "when prefetching); peak is the largest batch's allocator peak, weights included.", "")
    with Runtime() as held:
        sweep = Sweep(ctx, held, folder, imgs)
        try:
            sweep.warm_up()
            sweep.repetitions()
        finally:  # also when stopped at the deadline: the runs so far make the tables
            ctx.attempt("whole card again", partial(FULL.apply, sweep.meter))
            ctx.attempt("summary", partial(summary, ctx, sweep.results))


def summary(ctx: Context, results: list[dict[str, Any]]) -> None:
    """Median tables per cap, and the shares of sizing, sorting and prefetch."""
    for cap in CAPS:
        rows = [r for r in results if r.get("cap") == cap.label]
        if not rows:
            continue
        groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            groups[(r["label"], r["order"])].append(r)
        speed = {key: _speed(runs) for key, runs in groups.items()}
        ctx.rec.md(f"### Cap: {cap.label}", "")
        ctx.rec.table(["run", "order", "pages/s", "vs best fixed, same order", "model-only pages/s",
                       "prepare s / model s", "padding", "peak GiB (of cap)", "OOMs", "batch sizes", "reps"])
        best = _best_fixed(speed)
        for key, runs in groups.items():
            ctx.rec.row(_row(key, runs, speed[key], best, cap))
        ctx.rec.md("", *_shares(speed, groups, best), "")
        ctx.rec.data("summary", cap=cap.label, speed={f"{k[0]} | {k[1]}": v for k, v in speed.items()},
                     best_fixed={k: list(v) if v else None for k, v in best.items()})


def _ok(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in runs if r["status"] == "ok"]


def _speed(runs: list[dict[str, Any]]) -> float | None:
    """Median pages/s; None if any repetition ran out of memory or failed."""
    if len(_ok(runs)) < len(runs):
        return None
    return med([r["pages_per_s"] for r in runs])


def _best_fixed(speed: dict[tuple[str, str], float | None]) -> dict[str, tuple[str, float] | None]:
    out: dict[str, tuple[str, float] | None] = {}
    for order in ("input", "sorted"):
        fixed = [(label, s) for (label, o), s in speed.items() if o == order and label.startswith("fixed")
                 and s is not None]
        out[order] = max(fixed, key=lambda x: x[1]) if fixed else None
    return out


def _row(key: tuple[str, str], runs: list[dict[str, Any]], speed: float | None,
         best: dict[str, tuple[str, float] | None], cap: Cap) -> list[str]:
    label, order = key
    ok = _ok(runs)
    if not ok:
        failed = "OOM (no recovery)" if any(r["status"] == "oom" for r in runs) else "error"
        return [label, order, failed, *["-"] * 7, str(len(runs))]
    ref = best["sorted" if order != "input" else "input"]
    of = cap.of()
    peak = med([r["peak_bytes"] for r in ok])
    sizes = sorted({s for r in ok for s in r.get("batch_sizes", [])})
    return [
        label, order, f"{speed:.1f}" if speed is not None else f"{med([r['pages_per_s'] for r in ok]):.1f} (some OOM)",
        f"{speed / ref[1]:.2f}x" if speed is not None and ref else "-",
        f"{med([r['model_pages_per_s'] for r in ok]):.1f}",
        f"{med([r['prepare_s'] for r in ok]):.2f} / {med([r['model_s'] for r in ok]):.2f}",
        f"{100 * med([r['padding'] for r in ok]):.0f}%",
        f"{gib(peak)} ({100 * peak / of:.0f}%)" if of else "-",
        str(max(r.get("ooms_reported", 0) for r in ok)), _sizes(sizes), str(len(runs)),
    ]


def _sizes(sizes: list[int]) -> str:
    return ",".join(map(str, sizes)) if len(sizes) <= 6 else f"{sizes[0]}-{sizes[-1]} ({len(sizes)} sizes)"


def _shares(speed: dict[tuple[str, str], float | None], groups: dict[tuple[str, str], list[dict[str, Any]]],
            best: dict[str, tuple[str, float] | None]) -> list[str]:
    lines = []
    plain, sort = best["input"], best["sorted"]
    adaptive = speed.get(("adaptive", "by ragged"))
    serial = speed.get(("adaptive, no prefetch", "by ragged"))
    if plain and sort:
        lines.append(f"- Sorting alone: best fixed sorted ({sort[0]}) / best fixed in input order ({plain[0]}) = "
                     f"{sort[1] / plain[1]:.2f}x.")
    if adaptive and sort:
        lines.append(f"- Sizing: adaptive / best fixed sorted = {adaptive / sort[1]:.2f}x; against the best fixed "
                     f"in input order {adaptive / plain[1]:.2f}x." if plain else
                     f"- Sizing: adaptive / best fixed sorted = {adaptive / sort[1]:.2f}x.")
    if adaptive and serial:
        lines.append(f"- Prefetch: adaptive / adaptive without prefetch = {adaptive / serial:.2f}x.")
    for key in (("adaptive", "by ragged"), ("adaptive, no prefetch", "by ragged")):
        ok = _ok(groups.get(key, []))
        if ok:
            prep, model = med([r["prepare_s"] for r in ok]), med([r["model_s"] for r in ok])
            pace = "preprocessing (CPU)" if prep > model else "the model"
            lines.append(f"- Pace of {key[0]}: preprocessing {prep:.2f} s against model {model:.2f} s: {pace} "
                         "set it.")
    return lines
