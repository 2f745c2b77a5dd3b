"""Adaptive batch sizing against the best fixed batch, idle and under a competing load.

    python -m benchmarks.adaptive [--models tiny-colpali ...] [--pages 64] [--rounds 5]

For each model and condition this runs the comparison behind
``ragged gpu benchmark`` (:func:`ragged.cli.sweep.run_sweep`): fixed batches
1, 2, 4, ... and two adaptive runs, each warmed up once (left out), then
interleaved round-robin over ``--rounds`` rounds; medians of the rounds.
"adaptive" keeps its sizer across rounds, as an ingest keeps it across
documents, and learns over ``--learn-runs`` warm-up runs first: its figure
is the steady state of a long ingest. "new sizer" starts a fresh one every
round, so its figure includes finding a size on ``--pages`` pages: the cost
of learning, as a short ingest pays it.

The competing load is a busy loop on one core (pinned to core 0 where the
system allows) in a child process that this script starts before the
condition's runs and stops after them; the child also stops by itself
after ``--load-limit`` seconds, so nothing outlives a crash.

Targets on a 2-core CPU: adaptive / best fixed >= 0.95 idle and >= 0.85
under the load; no OOMs in the timed rounds; adaptive's largest batch
peak within the policy's budget.

The best fixed batch is the largest of several noisy medians, so the
table also says which fixed sizes, and whether adaptive, the rounds do not
show slower than it (a sign test over the paired rounds at 5%: with 5
rounds, level means it won at least one round): on a plateau that is how
far the yardstick itself moves.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass

from loguru import logger

from benchmarks._table import print_table
from ragged.cli.sweep import ADAPTIVE, FRESH, Sweep, run_sweep, size_runs
from ragged.gpu import default_device_manager

MODELS = ("tiny-colpali", "tiny-colqwen2", "tiny-colmodernvbert")
TARGETS = {"idle": 0.95, "loaded": 0.85}
BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextmanager
def competing_load(limit_s: float) -> Iterator[int]:
    """A busy loop on one core for at most ``limit_s`` seconds; stopped on exit."""
    child = subprocess.Popen([sys.executable, "-c", BUSY, str(limit_s)])
    try:
        if hasattr(os, "sched_setaffinity"):
            with suppress(OSError):  # not allowed here: it runs on whichever core the system gives it
                os.sched_setaffinity(child.pid, {0})
        yield child.pid
    finally:
        child.terminate()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(timeout=5)


@dataclass(frozen=True)
class Result:
    """One model under one condition."""

    model: str
    condition: str
    sweep: Sweep
    seconds: float


def measure(model: str, condition: str, args: argparse.Namespace) -> Result:
    manager = default_device_manager()
    device = manager.get_optimal_device(args.device)
    began = time.perf_counter()

    def note(text: str) -> None:
        print(f"  {model}, {condition}: {text}", file=sys.stderr, flush=True)

    if condition == "loaded":
        with competing_load(args.load_limit):
            sweep = run_sweep(model, device, args.pages, args.max_batch, manager=manager, rounds=args.rounds,
                              learn_runs=args.learn_runs, progress=note)
    else:
        sweep = run_sweep(model, device, args.pages, args.max_batch, manager=manager, rounds=args.rounds,
                          learn_runs=args.learn_runs, progress=note)
    return Result(model, condition, sweep, time.perf_counter() - began)


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 1024**2:,.0f} MiB"


def row(result: Result) -> list[str]:
    sweep = result.sweep
    best = sweep.best_fixed
    kept, fresh = sweep.row(ADAPTIVE), sweep.row(FRESH)
    ratio, fresh_ratio = sweep.ratio(ADAPTIVE), sweep.ratio(FRESH)
    target = TARGETS[result.condition]
    ooms = sum(r.ooms for r in (kept, fresh) if r is not None)
    within = "-"
    if kept is not None and kept.peak_bytes is not None and kept.budget_bytes is not None:
        within = f"{mib(kept.peak_bytes)} of {mib(kept.budget_bytes)}"
    return [
        result.model,
        result.condition,
        f"{best.batch}: {best.pages_per_second:.1f}" if best is not None else "-",
        f"{kept.pages_per_second:.1f}" if kept is not None else "-",
        f"{ratio:.3f}" if ratio is not None else "-",
        ("yes" if ratio >= target else "no") + f" (>= {target})" if ratio is not None else "-",
        f"{fresh_ratio:.3f}" if fresh_ratio is not None else "-",
        " ".join(str(b) for b in sweep.level_sizes) or "-",
        {True: "yes", False: "no", None: "-"}[sweep.level_with_best(ADAPTIVE)],
        " | ".join(size_runs(s) for s in kept.sizes) if kept is not None else "-",
        str(ooms),
        within,
        f"{result.seconds:.0f} s",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--conditions", nargs="+", choices=list(TARGETS), default=list(TARGETS))
    parser.add_argument("--pages", type=int, default=64, help="pages per run (one call of the embedder)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds after the warm-up")
    parser.add_argument("--learn-runs", type=int, default=4,
                        help="warm-up runs of the kept adaptive sizer (the others warm up once)")
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--load-limit", type=float, default=1800.0,
                        help="seconds after which the competing load stops by itself")
    args = parser.parse_args()
    if args.rounds < 5:
        print("note: fewer than 5 rounds; the medians are less steady", file=sys.stderr)
    logger.disable("ragged")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped run still stops its competing load
    results = []
    for model in args.models:
        for condition in args.conditions:
            results.append(measure(model, condition, args))
            print_result(results[-1])  # as it comes: a long run that is stopped still leaves its figures
    print(f"\n{args.pages} pages a run, median of {args.rounds} interleaved rounds after a warm-up "
          f"(the kept adaptive sizer's: {args.learn_runs} runs); "
          f"{os.cpu_count()} CPUs; load: a busy loop on one core")
    print_table(HEADERS, [row(r) for r in results])


def print_result(result: Result) -> None:
    """One result in full: every configuration's median and spread, then the summary row."""
    print(f"\n{result.model}, {result.condition}:")
    print_table(["configuration", "pages/s (median)", "slowest-fastest", "peak", "OOMs (timed)"],
                [(r.label, f"{r.pages_per_second:.2f}", f"{r.spread[0]:.2f}-{r.spread[1]:.2f}", mib(r.peak_bytes),
                  r.ooms) for r in result.sweep.rows])
    if result.sweep.sizing is not None:
        print(f"adaptive learnt: {result.sweep.sizing.describe()}")
    print_table(HEADERS, [row(result)])
    sys.stdout.flush()


HEADERS = ["model", "condition", "best fixed: pages/s", "adaptive pages/s", "adaptive / best", "target met",
           "new sizer / best", "fixed level with best", "adaptive level", "adaptive's sizes, per round",
           "OOMs (timed)", "adaptive peak of budget", "took"]


if __name__ == "__main__":
    main()
