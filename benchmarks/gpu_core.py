"""Overheads of ragged.gpu against the spec's targets, on this machine.

    python -m benchmarks.gpu_core

Times device detection (after torch is imported), a full memory snapshot,
a read of allocator counters (the per-batch hot path), a batch-size
calculation, and the overhead of a three-step OOM recovery excluding the
work itself (real CPU allocator OOMs from torch).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from loguru import logger

from benchmarks._table import print_table
from ragged.gpu import AdaptiveBatchSizer, DeviceInfo, DeviceManager, MemoryMonitor, OOMHandler


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    """Median wall time of ``fn`` over ``repeat`` calls."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def oom_recovery_overhead(manager: DeviceManager, device: DeviceInfo) -> float:
    """Seconds spent by the handler around three real OOMs, minus the work."""
    work_time = 0.0
    attempts = 0

    def work(dev: DeviceInfo, batch: int) -> int:
        nonlocal work_time, attempts
        start = time.perf_counter()
        attempts += 1
        try:
            if attempts <= 3:
                torch.empty(2**62, dtype=torch.uint8)  # a real DefaultCPUAllocator OOM
            return batch
        finally:
            work_time += time.perf_counter() - start

    handler = OOMHandler(manager)
    start = time.perf_counter()
    handler.run(work, device, 8)
    return time.perf_counter() - start - work_time


def main() -> None:
    logger.disable("ragged")
    DeviceManager()  # warm imports
    detection = median_seconds(DeviceManager, 20)
    manager = DeviceManager()
    device = manager.get_optimal_device()
    monitor = MemoryMonitor(device, manager)
    snapshot = median_seconds(monitor.take_snapshot, 200)
    counters = median_seconds(lambda: manager.counters(device), 2000)
    sizer = AdaptiveBatchSizer(device, None, None, manager)  # no monitor: every call reads the device
    calc = median_seconds(sizer.calculate_batch_size, 200)
    oom = statistics.median(oom_recovery_overhead(manager, device) for _ in range(5))
    print(f"device: {device} | torch {torch.__version__} | {platform.machine()} | python {platform.python_version()}")
    rows = [
        ("device detection", detection, 0.100, 0.010),
        ("memory snapshot (full reading)", snapshot, 0.010, None),
        ("allocator counters (hot path)", counters, 0.010, 0.0001),
        ("batch-size calculation (with a reading)", calc, 0.050, 0.001),
        ("OOM recovery overhead (3 steps)", oom, 2.0, None),
    ]
    print_table(
        ["measure", "measured", "spec target", "ragged aim", "x under target"],
        [
            (name, f"{value * 1e3:.3f} ms", f"{target * 1e3:.0f} ms",
             f"{aim * 1e3:.1f} ms" if aim else "-", f"{target / value:,.0f}x")
            for name, value, target, aim in rows
        ],
    )


if __name__ == "__main__":
    main()
