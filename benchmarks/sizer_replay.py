"""The adaptive sizer replayed on measured batch-size profiles, offline and seeded.

    python -m benchmarks.sizer_replay [--seeds 60] [--noise-idle 0.08] [--noise-loaded 0.15]

``benchmarks.adaptive`` judges the sizer on the real models, but one run
of it takes 35 minutes and its ratios move by 0.05-0.15 between runs on
this VM, so a change to the search rules cannot be judged by one run.
This script replays the same protocol (the kept sizer learns over 4 calls
of 64 pages, then 5 timed calls; the median call's speed against the best
fixed size) through the real :class:`~ragged.gpu.AdaptiveBatchSizer` on a
fake CPU whose load reading says the cores are free (idle) or one is busy
(loaded), where each batch of size ``s`` runs at the profile's rate for
``s`` times log-normal noise (a batch whose peak is measured runs a quarter
slower and is no sample, as on the real CPU). The profiles are the fixed-batch medians
(pages/s) that ``benchmarks.adaptive`` measured on the development machine
(fifth session, 2026-12-06; ``docs/benchmarks.md``); the noise is the
spread of single batches seen there (a MAD of 5-10% idle, 6-14% under the
load). Many seeds give the spread of outcomes a rule change shifts, in
seconds.

What it cannot show: costs that do not scale with a batch's own pages
(a call's first batch, memory faulted in again), which only the real
benchmark sees. To compare two versions of the rules, run it on each, e.g.
``PYTHONPATH=<other checkout>/src python -m benchmarks.sizer_replay``.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics

from loguru import logger

from benchmarks._table import print_table
from ragged.gpu import AdaptiveBatchSizer, DeviceManager, OOMHandler
from tests.fakes import GiB, MiB, fake_cpu

TARGETS = {"idle": 0.95, "loaded": 0.85}
BUSY = {"idle": 0.05, "loaded": 1.0}  # what the load reading reports: cores' worth used by other processes
MEASURED_SLOWER = 1.25  # a batch whose peak is measured on the CPU (the heap handed back first), as measured

# (model, condition, run) -> fixed batch size -> median pages/s, from benchmarks.adaptive (fifth session).
PROFILES: dict[tuple[str, str, str], dict[int, float]] = {
    ("tiny-colpali", "idle", "run 1"): {1: 21.40, 2: 26.23, 4: 26.95, 8: 27.60, 16: 28.12, 32: 24.94},
    ("tiny-colpali", "idle", "rerun"): {1: 29.48, 2: 32.24, 4: 33.94, 8: 32.74, 16: 34.00, 32: 32.37},
    ("tiny-colpali", "idle", "run 2"): {1: 27.69, 2: 32.18, 4: 34.56, 8: 35.78, 16: 34.24, 32: 32.39},
    ("tiny-colpali", "loaded", "run 1"): {1: 8.82, 2: 12.57, 4: 10.61, 8: 11.54, 16: 13.96, 32: 14.55},
    ("tiny-colpali", "loaded", "run 2"): {1: 8.33, 2: 12.14, 4: 11.44, 8: 11.92, 16: 14.61, 32: 15.37},
    ("tiny-colqwen2", "idle", "run 1"): {1: 16.39, 2: 17.42, 4: 16.83, 8: 16.48, 16: 16.21, 32: 14.43},
    ("tiny-colqwen2", "idle", "run 2"): {1: 17.95, 2: 19.07, 4: 16.89, 8: 16.26, 16: 15.86, 32: 14.34},
    ("tiny-colqwen2", "loaded", "run 1"): {1: 5.89, 2: 6.73, 4: 6.20, 8: 7.71, 16: 7.70, 32: 8.44},
    ("tiny-colqwen2", "loaded", "run 2"): {1: 5.63, 2: 6.44, 4: 6.27, 8: 7.78, 16: 7.94, 32: 7.38},
    ("tiny-colmodernvbert", "idle", "run 1"): {1: 8.74, 2: 8.97, 4: 7.47, 8: 7.04, 16: 7.85, 32: 6.54},
    ("tiny-colmodernvbert", "idle", "rerun"): {1: 9.85, 2: 9.99, 4: 9.13, 8: 7.87, 16: 8.02, 32: 7.07},
    ("tiny-colmodernvbert", "idle", "run 2"): {1: 8.01, 2: 7.94, 4: 6.22, 8: 6.11, 16: 6.75, 32: 6.20},
    ("tiny-colmodernvbert", "loaded", "run 1"): {1: 5.20, 2: 4.76, 4: 4.51, 8: 5.66, 16: 6.44, 32: 5.68},
    ("tiny-colmodernvbert", "loaded", "run 2"): {1: 5.13, 2: 4.34, 4: 4.01, 8: 4.72, 16: 5.62, 32: 5.48},
}


def new_sizer(busy_elsewhere: float | None = None) -> AdaptiveBatchSizer:
    """A sizer on a fake 24 GiB CPU (memory never limits these sizes), as the embedder makes one;
    ``busy_elsewhere`` is what its load reading reports (cores' worth used by other processes)."""
    cpu = fake_cpu(total=24 * GiB, others=2 * GiB)
    cpu.elsewhere = busy_elsewhere
    manager = DeviceManager([cpu])
    return AdaptiveBatchSizer(manager.cpu(), None, None, manager, oom_handler=OOMHandler(manager),
                              prior_bytes_per_load=1.0)


def call(sizer: AdaptiveBatchSizer, rates: dict[int, float], pages: int, noise: float, rng: random.Random) -> float:
    """One call of ``pages`` pages; its pages per second."""
    left, seconds = pages, 0.0
    while left:
        planned = sizer.next_batch_size(load_per_item=1)
        size = min(planned, left)
        nearest = min(rates, key=lambda s: abs(s - size))  # a size off the ladder runs as its neighbour
        measured = sizer.wants_measurement(size)  # as BatchRunner asks where measuring costs time (the CPU)
        took = size / (rates[nearest] * math.exp(rng.gauss(0.0, noise))) * (MEASURED_SLOWER if measured else 1.0)
        sizer.record_batch(size, size, size * MiB if measured else None, took, full=size == planned)
        seconds += took
        left -= size
    return pages / seconds


def replay(rates: dict[int, float], noise: float, seed: int, *, pages: int, learn: int, rounds: int,
           busy_elsewhere: float | None = None) -> float:
    """The kept sizer's median timed call against the best fixed size."""
    rng = random.Random(seed)
    sizer = new_sizer(busy_elsewhere)
    for _ in range(learn):
        call(sizer, rates, pages, noise, rng)
    return statistics.median(call(sizer, rates, pages, noise, rng) for _ in range(rounds)) / max(rates.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=60)
    parser.add_argument("--pages", type=int, default=64)
    parser.add_argument("--learn-runs", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--noise-idle", type=float, default=0.08, help="sd of a batch's log rate, idle")
    parser.add_argument("--noise-loaded", type=float, default=0.15, help="the same under the load")
    args = parser.parse_args()
    logger.disable("ragged")
    rows = []
    for (model, condition, run), rates in PROFILES.items():
        noise = args.noise_idle if condition == "idle" else args.noise_loaded
        busy = BUSY[condition]
        ratios = sorted(replay(rates, noise, seed, pages=args.pages, learn=args.learn_runs, rounds=args.rounds,
                               busy_elsewhere=busy) for seed in range(args.seeds))
        target = TARGETS[condition]
        best = max(rates, key=lambda s: rates[s])
        rows.append([model, condition, run, f"{best}: {rates[best]:.1f}", f"{statistics.median(ratios):.3f}",
                     f"{ratios[len(ratios) // 10]:.3f}", f"{ratios[0]:.3f}",
                     f"{sum(r >= target for r in ratios) / len(ratios):.0%} (>= {target})"])
    print(f"kept sizer: {args.learn_runs} learning calls, median of {args.rounds} timed calls of {args.pages} "
          f"pages; {args.seeds} seeds; batch noise sd {args.noise_idle} idle, {args.noise_loaded} loaded")
    print_table(["model", "condition", "profile", "best fixed", "adaptive / best: median", "10th percentile",
                 "worst", "seeds meeting the target"], rows)


if __name__ == "__main__":
    main()
