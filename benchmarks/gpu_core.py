"""Overheads of ragged.gpu against the spec's targets, on this machine.

    python -m benchmarks.gpu_core

Times device detection (after torch is imported), a full memory snapshot,
a read of allocator counters (the per-batch hot path), a batch-size
calculation, and the overhead of a three-step OOM recovery excluding the
work itself (real CPU allocator OOMs from torch). Then three behaviours of
the consolidated manager, side by side in one run:

- items prepared per item used when the next batch is prepared ahead
  while the batch size grows (aim: 1.05 or less);
- OOMs on a second ``@with_oom_handling`` call once the first has learnt
  the size that fits (aim: 0);
- wall time of ``ragged --help``, ``ragged --version`` and ``ragged gpu list``
  as fresh processes (aim: --help under 0.5 s).
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable

import torch
from loguru import logger

from benchmarks._process import process_seconds
from benchmarks._table import print_table
from ragged.gpu import AdaptiveBatchSizer, DeviceInfo, DeviceManager, MemoryMonitor, Runtime


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

    handler = Runtime(manager).oom_handler
    start = time.perf_counter()
    handler.run(work, device, 8)
    return time.perf_counter() - start - work_time


def prefetch_ratio() -> tuple[float, str]:
    """Items prepared per item used, with preparation ahead while sizes grow
    (a fake 80 GiB card; compute costs a fixed 20 ms a batch plus 1 ms an item)."""
    from ragged.gpu import BatchRunner, BatchSizeConfig, Stages
    from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu

    manager = DeviceManager([FakeBackend(cards=[FakeCard(total=80 * GiB)]), fake_cpu()])
    device = manager.get_optimal_device("cuda:0")
    runtime = Runtime(manager, batch_config=BatchSizeConfig(max_batch_size=64))
    handler = runtime.oom_handler
    sizer = runtime.sizer_for(device, "prefetch", prior_bytes_per_load=1.0)

    def compute(prepared: list[int], dev: DeviceInfo) -> list[int]:
        time.sleep(0.02 + 0.001 * len(prepared))
        return prepared

    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, prefetch=True)
    _, stats = runner.run([1] * 300, Stages(lambda idx: list(idx), compute))
    return stats.prepared_items / stats.items, ",".join(map(str, stats.batch_sizes))


def second_call_ooms() -> tuple[int, int]:
    """OOMs of a first and a second call of one decorated function (real CPU
    allocator OOMs above 4 items a batch)."""
    from ragged.gpu import with_oom_handling

    @with_oom_handling()
    def work(data: list[int], *, device: DeviceInfo, batch_size: int) -> int:
        if batch_size > 4:
            torch.empty(2**62, dtype=torch.uint8)  # a real DefaultCPUAllocator OOM
        return sum(data)

    handler = work.oom_handler()  # type: ignore[attr-defined]
    cpu = DeviceManager().cpu()
    work(list(range(100)), device=cpu, batch_size=32)
    first = handler.stats.ooms
    work(list(range(100)), device=cpu, batch_size=32)
    return first, handler.stats.ooms - first


def main() -> None:
    logger.disable("ragged")
    DeviceManager()  # warm imports
    detection = median_seconds(DeviceManager, 20)
    manager = DeviceManager()
    device = manager.get_optimal_device()
    monitor = MemoryMonitor(device, manager)
    snapshot = median_seconds(monitor.take_snapshot, 200)
    counters = median_seconds(lambda: manager.counters(device), 2000)
    # No monitor: every call reads the device.
    sizer = AdaptiveBatchSizer(device, None, None, oom_handler=Runtime(manager).oom_handler)
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
    ratio, sizes = prefetch_ratio()
    first, second = second_call_ooms()
    print()
    print_table(
        ["behaviour", "measured", "aim"],
        [
            ("items prepared per item used, prefetch while growing", f"{ratio:.3f} (batches {sizes})", "<= 1.05"),
            ("OOMs: first / second @with_oom_handling call", f"{first} / {second}", "second: 0"),
            ("`ragged --help` process", f"{process_seconds(['--help']):.2f} s", "< 0.5 s"),
            ("`ragged --version` process", f"{process_seconds(['--version']):.2f} s", "-"),
            ("`ragged gpu list` process", f"{process_seconds(['gpu', 'list']):.2f} s", "-"),
        ],
    )


if __name__ == "__main__":
    main()
