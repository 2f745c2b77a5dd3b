"""The interleaved batch-size comparison behind ``ragged gpu benchmark``.

Every configuration (fixed batches 1, 2, 4, ... and adaptive) has its own
embedder over one shared model. Each first runs once over the pages as a
warm-up (first calls pay one-off costs: kernels chosen per shape, memory
grown); that run is left out. Then the configurations run in rounds,
round-robin, the order rotated by one each round, so a change in the
machine's load falls on all of them alike; each is summarised by the
median and spread of its rounds. One pass per configuration, in sequence,
cannot rank batch sizes on a machine doing anything else.

Two adaptive runs are shown: ``adaptive`` keeps its sizer across rounds,
as an embedder does across the documents of an ingest, and ``adaptive,
new sizer`` starts a fresh one every round, so its figure includes the
search for a good size on 'pages' pages.
"""

from __future__ import annotations

import math
import statistics
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.report import EmbeddingReport
from ragged.errors import OutOfMemoryRecoveryError
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.recovery import RecoveryOptions
from ragged.gpu.runtime import Runtime
from ragged.gpu.throughput import SizingRecord
from ragged.gpu.types import DeviceInfo
from ragged.paths import cache_dir

ADAPTIVE = "adaptive"
FRESH = "adaptive, new sizer"
SIGN_TEST_LEVEL = 0.05  # a configuration is behind the best only where it lost so many rounds that chance says this


def sign_test(losses: int, rounds: int) -> float:
    """The chance of losing at least ``losses`` of ``rounds`` paired rounds
    to an equal rival (one-sided sign test)."""
    return sum(math.comb(rounds, k) for k in range(losses, rounds + 1)) / float(2**rounds)


@dataclass(frozen=True)
class SweepRow:
    """One configuration over the rounds (memory in bytes, rates in pages/s)."""

    label: str
    batch: int | None  # None: adaptive
    rates: tuple[float, ...]  # one per round, warm-up excluded; empty after an OOM of a fixed batch
    peak_bytes: int | None  # the largest batch peak seen (None: not measured)
    ooms: int  # in the timed rounds
    budget_bytes: int | None = None  # the policy's batch budget at the last decision (None: unreadable)
    sizes: tuple[tuple[int, ...], ...] = ()  # batch sizes of each timed round
    warmup_sizes: tuple[int, ...] = ()  # batch sizes of the warm-up run
    warmup_ooms: int = 0

    @property
    def pages_per_second(self) -> float:
        """Median over the rounds (0 where the configuration ran out of memory)."""
        return statistics.median(self.rates) if self.rates else 0.0

    @property
    def spread(self) -> tuple[float, float]:
        """Slowest and fastest round."""
        return (min(self.rates), max(self.rates)) if self.rates else (0.0, 0.0)

    @property
    def typical_batch(self) -> int | None:
        """The batch size that handled most pages in the timed rounds."""
        if self.batch is not None:
            return self.batch
        pages: Counter[int] = Counter()
        for run in self.sizes:
            for size in run:
                pages[size] += size
        return pages.most_common(1)[0][0] if pages else None

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form, with the median and spread."""
        low, high = self.spread
        return {"label": self.label, "batch": self.batch, "pages_per_second": self.pages_per_second,
                "slowest": low, "fastest": high, "rates": list(self.rates), "peak_bytes": self.peak_bytes,
                "budget_bytes": self.budget_bytes, "ooms": self.ooms, "sizes": [list(s) for s in self.sizes],
                "warmup_sizes": list(self.warmup_sizes), "warmup_ooms": self.warmup_ooms}


@dataclass
class Sweep:
    """The rows of one comparison, and what the kept adaptive sizer learnt."""

    rows: list[SweepRow]
    sizing: SizingRecord | None = None
    rounds: int = 0

    @property
    def best_fixed(self) -> SweepRow | None:
        """The fixed batch with the highest median."""
        fixed = [r for r in self.rows if r.batch is not None and r.rates]
        return max(fixed, key=lambda r: r.pages_per_second) if fixed else None

    def row(self, label: str) -> SweepRow | None:
        """The row of ``label``, if it ran."""
        return next((r for r in self.rows if r.label == label), None)

    def ratio(self, label: str) -> float | None:
        """``label`` against the best fixed batch: the median over rounds of
        their ratio within each round (both ran minutes apart at most, so a
        change in the machine's load between rounds cancels out), or the
        ratio of their medians where their rounds do not pair up."""
        best, row = self.best_fixed, self.row(label)
        if best is None or row is None or best.pages_per_second <= 0 or not row.rates:
            return None  # nothing to compare (a configuration that ran out of memory has no rounds)
        if len(row.rates) == len(best.rates) and all(r > 0 for r in best.rates):
            return statistics.median(a / b for a, b in zip(row.rates, best.rates, strict=True))
        return row.pages_per_second / best.pages_per_second

    def level_with_best(self, label: str) -> bool | None:
        """Whether the rounds do not show ``label`` slower than the best
        fixed batch: it lost to it in too few paired rounds for a sign test
        to call it slower at :data:`SIGN_TEST_LEVEL` (with 5 rounds: it won
        at least one). The best is the largest of several noisy medians, so
        on a plateau the sizes level with it show how far the yardstick
        itself moves. None where the rounds do not pair up."""
        best, row = self.best_fixed, self.row(label)
        if best is None or row is None or not row.rates or len(row.rates) != len(best.rates):
            return None
        if row is best:
            return True
        losses = sum(a < b for a, b in zip(row.rates, best.rates, strict=True))
        return sign_test(losses, len(row.rates)) > SIGN_TEST_LEVEL

    @property
    def level_sizes(self) -> list[int]:
        """The fixed batch sizes level with the best (:meth:`level_with_best`), the best included."""
        return [r.batch for r in self.rows if r.batch is not None and self.level_with_best(r.label)]


def synthetic_pages(n: int) -> list[Image.Image]:
    """Letter-sized noise pages at 72 dpi (deterministic)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (792, 612, 3), dtype=np.uint8)) for _ in range(n)]


def batch_ladder(max_batch: int) -> list[int]:
    """Fixed sizes to compare: 1, 2, 4, ... up to ``max_batch``."""
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    return sizes


@dataclass
class _Config:
    """One configuration and what it measured so far."""

    label: str
    batch: int | None
    make: Callable[[], ColPaliEmbedder]
    fresh: bool = False  # a new embedder (and so a new sizer) for every round
    embedder: ColPaliEmbedder | None = None
    rates: list[float] = field(default_factory=list)
    sizes: list[tuple[int, ...]] = field(default_factory=list)
    warmup: tuple[int, ...] = ()
    peak: int | None = None
    budget: int | None = None
    ooms: int = 0
    warmup_ooms: int = 0
    failed: bool = False

    def row(self) -> SweepRow:
        return SweepRow(self.label, self.batch, tuple(self.rates), self.peak, self.ooms, self.budget,
                        tuple(self.sizes), self.warmup, self.warmup_ooms)


def _timed(emb: ColPaliEmbedder, images: Sequence[Image.Image]) -> tuple[float, EmbeddingReport]:
    """Seconds of one call and its report."""
    start = time.perf_counter()
    report = emb.embed_pages(images, keep_going=False).report
    return time.perf_counter() - start, report


def _run_once(config: _Config, images: Sequence[Image.Image], *, timed: bool) -> None:
    if config.embedder is None or (config.fresh and timed):
        if config.embedder is not None:
            config.embedder.close()  # the model stays with the shared manager
        config.embedder = config.make()
    try:
        seconds, report = _timed(config.embedder, images)
    except OutOfMemoryRecoveryError:  # a fixed batch that does not fit (no recovery for those)
        config.failed = True
        config.ooms += timed
        config.warmup_ooms += not timed
        config.rates.clear()
        return
    config.ooms += report.ooms if timed else 0
    config.warmup_ooms += 0 if timed else report.ooms
    config.budget = report.budget_bytes
    if report.peak_bytes is not None:
        config.peak = max(config.peak or 0, report.peak_bytes)
    if timed:
        config.rates.append(len(images) / seconds)
        config.sizes.append(tuple(report.batch_sizes))
    else:
        config.warmup += tuple(report.batch_sizes)


def run_sweep(model: str, device: DeviceInfo, pages: int, max_batch: int, *, manager: DeviceManager,
              rounds: int = 5, learn_runs: int = 1, progress: Callable[[str], None] | None = None) -> Sweep:
    """Fixed batches 1, 2, 4, ... up to ``max_batch`` (no OOM recovery) and the
    two adaptive runs, interleaved over ``rounds`` rounds after one warm-up run
    each; the kept adaptive sizer warms up over ``learn_runs`` runs (its
    steady state, as an ingest past its first documents)."""
    images = synthetic_pages(pages)
    # One runtime holds the model; each fixed size measures through a twin without recovery and with an
    # engine of its own (an OOM is that size failing, and never clamps another size), the kept adaptive
    # run through the runtime itself, and the new-sizer run through a fresh twin every round.
    with Runtime(manager) as runtime:

        def embedder(size: int | None, on: Runtime | None = None) -> ColPaliEmbedder:
            if on is None:
                on = runtime.with_recovery(RecoveryOptions.none()) if size else runtime.with_recovery(RecoveryOptions())
            return ColPaliEmbedder(model, device=device, batch_size=size or max_batch, cache_dir=cache_dir(),
                                   enable_adaptive_batching=size is None, runtime=on)

        configs = [_Config(f"fixed {s}", s, partial(embedder, s)) for s in batch_ladder(max_batch)]
        configs += [_Config(ADAPTIVE, None, partial(embedder, None, runtime)),
                    _Config(FRESH, None, partial(embedder, None), fresh=True)]
        for config in configs:
            for _ in range(learn_runs if config.label == ADAPTIVE else 1):
                _run_once(config, images, timed=False)
        for n in range(rounds):
            if progress is not None:
                progress(f"round {n + 1} of {rounds}")
            for config in configs[n % len(configs):] + configs[: n % len(configs)]:
                if not config.failed:
                    _run_once(config, images, timed=True)
        kept = configs[-2].embedder
        sizing = kept.batch_sizer.record() if kept is not None and kept.batch_sizer is not None else None
        rows = [c.row() for c in configs]
        for config in configs:
            if config.embedder is not None:
                config.embedder.close()
    return Sweep(rows, sizing, rounds)


def size_runs(sizes: Sequence[int]) -> str:
    """Batch sizes in order, repeats folded: ``4 8x3 4``."""
    parts: list[str] = []
    for size in sizes:
        if parts and parts[-1].split("x")[0] == str(size):
            head, _, count = parts[-1].partition("x")
            parts[-1] = f"{head}x{int(count or 1) + 1}"
        else:
            parts.append(str(size))
    return " ".join(parts)


def plot_sweep(sweep: Sweep, path: Path, title: str) -> None:
    """Save :func:`sweep_figure` as a PNG."""
    import matplotlib.pyplot as plt

    fig = sweep_figure(sweep, title)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def sweep_figure(sweep: Sweep, title: str) -> Any:
    """Three panels: pages/s and peak memory by batch size (fixed: median with
    the slowest and fastest round; adaptive: a marker at the size it used most
    and a dashed line, on both), and adaptive's batch sizes over time. Batch
    sizes are labelled as plain integers."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    fixed = [r for r in sweep.rows if r.batch is not None and r.rates]
    adaptive = [r for r in sweep.rows if r.batch is None and r.rates]
    fig, (speed, memory, sizes) = plt.subplots(1, 3, figsize=(13, 3.8))
    xs = [r.batch for r in fixed]
    medians = [r.pages_per_second for r in fixed]
    low = [m - r.spread[0] for m, r in zip(medians, fixed, strict=True)]
    high = [r.spread[1] - m for m, r in zip(medians, fixed, strict=True)]
    speed.errorbar(xs, medians, yerr=[low, high], fmt="o-", capsize=3, label="fixed (median, slowest-fastest)")
    memory.plot(xs, [(r.peak_bytes or 0) / 1024**2 for r in fixed], "o-", label="fixed")
    colours = ("tab:green", "tab:purple")
    for colour, row in zip(colours, adaptive, strict=False):
        where = row.typical_batch
        speed.axhline(row.pages_per_second, color=colour, linestyle="--", linewidth=1)
        speed.plot([where], [row.pages_per_second], "D", color=colour, label=f"{row.label} (mostly {where})")
        if row.peak_bytes is not None:
            memory.axhline(row.peak_bytes / 1024**2, color=colour, linestyle="--", linewidth=1)
            memory.plot([where], [row.peak_bytes / 1024**2], "D", color=colour, label=row.label)
        over_time = [s for run in (row.warmup_sizes, *row.sizes) for s in run]
        sizes.step(range(1, len(over_time) + 1), over_time, where="post", color=colour, label=row.label)
    ticks = sorted({r.batch for r in fixed if r.batch is not None})
    for panel in (speed, memory):
        panel.set_xscale("log", base=2)
        panel.set_xticks(ticks, [str(t) for t in ticks])
        panel.xaxis.set_minor_locator(NullLocator())
        panel.legend(fontsize="small")
    speed.set(xlabel="batch size", ylabel="pages/s", title="throughput")
    memory.set(xlabel="batch size", ylabel="peak MiB above the model", title="memory")
    sizes.set_yscale("log", base=2)
    sizes.set_yticks(ticks, [str(t) for t in ticks])
    sizes.yaxis.set_minor_locator(NullLocator())
    sizes.set(xlabel="batch (warm-up run first)", ylabel="batch size", title="adaptive: sizes over time")
    sizes.legend(fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    return fig
