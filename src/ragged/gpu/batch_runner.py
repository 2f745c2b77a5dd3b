"""Runs items through a model in adaptive batches and loses none on OOM.

Items are sorted by cost (largest first, so the first batches meet the
worst case and similar items share a batch), cut into batches sized by the
:class:`AdaptiveBatchSizer`, and returned in the caller's order. On an OOM
the failed batch is split in half and retried, items already done are kept;
a single item that still fails is retried once after clearing the cache and,
as the last resort, run on the CPU.

A batch function given as :class:`Stages` (host-side preparation, then
device compute) is pipelined on accelerators: while the device computes
batch k, a worker thread prepares batch k+1 (guessed to be the same size;
a wrong guess is dropped and prepared again), so CPU preprocessing does not
leave the GPU idle.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

from loguru import logger

from ragged.errors import OutOfMemoryRecoveryError
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, measured_peak
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.oom_detection import clear_tracebacks, is_oom_error
from ragged.gpu.oom_handler import OOMHandler, OOMStats, RecoveryStrategy, summarise_oom
from ragged.gpu.types import DeviceInfo

R = TypeVar("R")
P = TypeVar("P")

# process(indices, device) -> one result per index, in the same order.
BatchFn = Callable[[list[int], DeviceInfo], list[R]]


@dataclass(frozen=True)
class Stages(Generic[P, R]):
    """A batch function in two steps: ``prepare(indices)`` on the host (must
    be thread-safe), then ``compute(prepared, device)``, one result per index."""

    prepare: Callable[[list[int]], P]
    compute: Callable[[P, DeviceInfo], list[R]]


class _Prefetcher:
    """Prepares the guessed next batch in a worker thread, one preparation
    at a time (tokenizers are not re-entrant)."""

    def __init__(self, stages: Stages[Any, Any], enabled: bool) -> None:
        self._stages = stages
        self._executor = ThreadPoolExecutor(1, "ragged-prepare") if enabled else None
        self._ahead: tuple[list[int], Future[Any]] | None = None

    def take(self, batch: list[int]) -> Future[Any] | None:
        """The preparation of ``batch`` if it was guessed; a wrong guess is
        let finish and dropped, so the caller can prepare the right batch."""
        ahead, self._ahead = self._ahead, None
        if ahead is None:
            return None
        if ahead[0] == batch:
            return ahead[1]
        self._drop(ahead[1])
        return None

    def start(self, following: list[int]) -> None:
        """Begin preparing ``following`` (call once the current batch is prepared)."""
        if self._executor is not None and following:
            self._ahead = (following, self._executor.submit(self._stages.prepare, following))

    def settle(self) -> None:
        """Wait for, and drop, any preparation in flight."""
        if self._ahead is not None:
            self._drop(self._ahead[1])
            self._ahead = None

    @staticmethod
    def _drop(future: Future[Any]) -> None:
        if not future.cancel():
            with suppress(Exception):  # its batch is prepared again, and fails again, in the open
                future.result()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _as_stages(process: BatchFn[R] | Stages[Any, R]) -> Stages[Any, R]:
    if isinstance(process, Stages):
        return process
    return Stages(prepare=lambda indices: indices, compute=process)


@dataclass
class RunStats:
    """What one run did, for reports."""

    device: str = ""
    items: int = 0
    seconds: float = 0.0
    work_seconds: float = 0.0  # inside the batch function, successful batches only
    batch_sizes: list[int] = field(default_factory=list)
    peak_bytes: int = 0  # largest batch peak above the baseline
    budget_bytes: int | None = None
    cpu_fallback_items: int = 0
    oom: OOMStats = field(default_factory=OOMStats)

    @property
    def items_per_second(self) -> float:
        """Throughput of the run."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def overhead_fraction(self) -> float:
        """Share of the run spent outside the batch function (management)."""
        return max(0.0, 1.0 - self.work_seconds / self.seconds) if self.seconds > 0 else 0.0


@dataclass
class _Failure:
    reason: str
    baseline_allocated: int


class BatchRunner(Generic[R]):
    """Applies a batch function to items with sizing, monitoring and recovery."""

    def __init__(
        self,
        device: DeviceInfo,
        sizer: AdaptiveBatchSizer | None,
        oom_handler: OOMHandler,
        *,
        monitor: MemoryMonitor | None = None,
        fixed_batch_size: int | None = None,
        prefetch: bool | None = None,
    ) -> None:
        if sizer is None and fixed_batch_size is None:
            raise ValueError("BatchRunner needs a sizer or a fixed batch size.")
        # On the CPU a preparing thread would compete with compute for the same cores.
        self.prefetch = device.is_accelerator if prefetch is None else prefetch
        self.device = device
        self.sizer = sizer
        self.handler = oom_handler
        self.monitor = monitor
        self.fixed_batch_size = fixed_batch_size
        self.manager = oom_handler.manager

    def run(
        self,
        costs: Sequence[int],
        process: BatchFn[R] | Stages[Any, R],
        on_batch: Callable[[int], None] | None = None,
    ) -> tuple[list[R], RunStats]:
        """Process every item once; results in the order of ``costs``.

        ``on_batch(n)`` is called after each finished batch of ``n`` items."""
        stages = _as_stages(process)
        prefetcher = _Prefetcher(stages, self.prefetch and isinstance(process, Stages))
        try:
            return self._run(costs, stages, on_batch, prefetcher)
        finally:
            prefetcher.close()

    def _run(
        self,
        costs: Sequence[int],
        stages: Stages[Any, R],
        on_batch: Callable[[int], None] | None,
        prefetcher: _Prefetcher,
    ) -> tuple[list[R], RunStats]:
        stats = RunStats(device=self.device.label, items=len(costs))
        order = sorted(range(len(costs)), key=lambda i: -costs[i])
        results: dict[int, R] = {}
        split_cap: int | None = None  # halves of a failed batch, until its items are done
        split_end = 0
        ceiling: int | None = None  # below every size that ran out of memory, for the rest of the run
        cleared_for_single = False
        start = time.perf_counter()
        pos = 0
        while pos < len(order):
            longest = max(1, costs[order[pos]])
            size = self._next_size(longest, len(order) - pos, split_cap, ceiling)
            batch = order[pos : pos + size]
            following = order[pos + size : pos + 2 * size]  # the guess: same size again
            outcome = self._attempt(batch, self.device, stages, stats, longest, prefetcher.take(batch),
                                    partial(prefetcher.start, following))
            if not isinstance(outcome, _Failure):
                results.update(zip(batch, outcome, strict=True))
                pos += size
                cleared_for_single = False
                if on_batch is not None:
                    on_batch(size)
                if split_cap is not None and pos >= split_end:
                    split_cap = None
                continue
            # The exception is gone by now; release what the attempt held.
            stats.oom.ooms += 1
            ceiling = max(1, size - 1) if ceiling is None else max(1, min(ceiling, size - 1))
            if self.sizer is not None:
                self.sizer.record_oom(size, size * longest)
            self.handler.release(self.device, outcome.baseline_allocated)
            if size > 1 and self.handler.enable_batch_reduction:
                split_cap = size // 2
                split_end = pos + size
                stats.oom.recoveries[RecoveryStrategy.REDUCE_BATCH] += 1
                logger.warning(
                    "Out of memory on {} at batch {} ({}); splitting into batches of {}",
                    self.device.label, size, outcome.reason, split_cap,
                )
                continue
            if self.device.is_accelerator and self.handler.enable_cache_clearing and not cleared_for_single:
                cleared_for_single = True
                stats.oom.recoveries[RecoveryStrategy.CLEAR_CACHE] += 1
                logger.warning("Out of memory on {} ({}); retrying after clearing the cache",
                               self.device.label, outcome.reason)
                continue
            prefetcher.settle()
            results.update(zip(batch, self._on_cpu(batch, stages, stats, outcome.reason), strict=True))
            pos += size
            cleared_for_single = False
            if on_batch is not None:
                on_batch(size)
        stats.seconds = time.perf_counter() - start
        if self.sizer is not None:
            stats.budget_bytes = self.sizer.last_budget_bytes
        return [results[i] for i in range(len(costs))], stats

    def _next_size(self, longest: int, remaining: int, split_cap: int | None, ceiling: int | None) -> int:
        if self.sizer is not None:
            size = self.sizer.next_batch_size(load_per_item=longest)
        else:
            assert self.fixed_batch_size is not None
            size = self.fixed_batch_size
        for cap in (split_cap, ceiling):
            if cap is not None:
                size = min(size, cap)
        return max(1, min(size, remaining))

    def _attempt(
        self,
        batch: list[int],
        device: DeviceInfo,
        stages: Stages[Any, R],
        stats: RunStats,
        longest: int,
        ready: Future[Any] | None = None,
        prepare_next: Callable[[], None] | None = None,
    ) -> list[R] | _Failure:
        before = self.manager.counters(device)
        self.manager.reset_peak(device)
        began = time.perf_counter()
        try:
            prepared = ready.result() if ready is not None else stages.prepare(batch)
            if prepare_next is not None:  # only now: one preparation at a time
                prepare_next()
            out = stages.compute(prepared, device)
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            return _Failure(summarise_oom(exc), before.allocated)
        seconds = time.perf_counter() - began
        peak = measured_peak(before, self.manager.counters(device))
        stats.work_seconds += seconds
        stats.batch_sizes.append(len(batch))
        stats.peak_bytes = max(stats.peak_bytes, peak)
        if self.sizer is not None and device.same_device(self.device):
            self.sizer.record_batch(len(batch), len(batch) * longest, peak, seconds)
        if self.monitor is not None:
            self.monitor.take_snapshot()
        return out

    def _on_cpu(self, batch: list[int], stages: Stages[Any, R], stats: RunStats, reason: str) -> list[R]:
        cpu = self.manager.cpu()
        if not (self.device.is_accelerator and self.handler.enable_cpu_fallback):
            stats.oom.failures += 1
            raise OutOfMemoryRecoveryError(
                f"Out of memory on {self.device.label} even at batch {len(batch)} ({reason}). "
                "Free memory (close other programs), lower the model's resolution, "
                "or choose another device with --device."
            )
        stats.oom.recoveries[RecoveryStrategy.CPU_FALLBACK] += 1
        logger.warning("Out of memory on {} at batch {}; running it on the CPU (slow)",
                       self.device.label, len(batch))
        try:
            out = stages.compute(stages.prepare(batch), cpu)
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            stats.oom.failures += 1
            clear_tracebacks(exc)
            raise OutOfMemoryRecoveryError(
                f"Out of memory on {self.device.label} and on the CPU for one item. "
                "The input is too large for this machine: lower --dpi or use a smaller model."
            ) from exc
        stats.cpu_fallback_items += len(batch)
        return out
