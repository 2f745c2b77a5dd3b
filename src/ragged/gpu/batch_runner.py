"""Runs items through a model in adaptive batches and loses none on OOM.

Items are sorted by cost (largest first, so the first batches meet the
worst case and similar items share a batch), cut into batches sized by the
:class:`AdaptiveBatchSizer` (or a fixed size), and returned in the caller's
order. An OOM is handed to the one recovery engine
(:class:`~ragged.gpu.oom_handler.OOMHandler`): the failed batch is split
and retried, items already done are kept, a single item that still fails
is retried after clearing the cache and then on the CPU. With
``keep_going`` an item that fails even there comes back as an
:class:`ItemFailure` and the rest go on.

A batch function given as :class:`Stages` (host-side preparation, then
device compute) is pipelined on accelerators: while the device computes
batch k, a worker thread prepares batch k+1 at the size the sizer predicts.
A prepared batch that memory and the OOM ceiling allow is used as it is,
even where the sizer would now pick another size, so preparation is almost
never wasted; only a batch made too large by an OOM is dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, Generic, TypeVar

from loguru import logger

from ragged.errors import OutOfMemoryRecoveryError
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, MeasureCadence, measured_peak
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.recovery import Attempt, OOMHandler, RecoveryStep
from ragged.gpu.stats import RunStats
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


@dataclass(frozen=True)
class ItemFailure:
    """An item that could not be processed even after every recovery step."""

    reason: str


def every_result(results: Sequence[R | ItemFailure]) -> list[R]:
    """``results`` of a run without ``keep_going`` (where a failure raises):
    typed as all present; an :class:`ItemFailure` among them is a bug."""
    failures = [r.reason for r in results if isinstance(r, ItemFailure)]
    if failures:
        raise OutOfMemoryRecoveryError(f"{len(failures)} item(s) failed: {failures[0]}")
    return [r for r in results if not isinstance(r, ItemFailure)]


@dataclass
class _Ahead:
    start: int  # position in the sorted order
    items: list[int]
    future: Future[Any]


class _Prefetcher:
    """Prepares the predicted next batch in a worker thread. With prefetch
    on, every preparation goes through the one worker, so two never run at
    once (tokenizers are not re-entrant) and a dropped one is never waited for."""

    def __init__(self, stages: Stages[Any, Any], enabled: bool) -> None:
        self._stages = stages
        self._executor = ThreadPoolExecutor(1, "ragged-prepare") if enabled else None
        self._ahead: _Ahead | None = None
        self.prepared_items = 0

    @property
    def enabled(self) -> bool:
        return self._executor is not None

    def take(self, start: int) -> _Ahead | None:
        """The batch prepared to start at ``start``, if any (others are dropped)."""
        ahead, self._ahead = self._ahead, None
        if ahead is None or ahead.start == start:
            return ahead
        ahead.future.cancel()  # not started: never runs; running: finishes unseen in the worker
        return None

    def prepare(self, items: list[int]) -> Any:
        """Prepare ``items`` now (through the worker when prefetch is on)."""
        self.prepared_items += len(items)
        if self._executor is None:
            return self._stages.prepare(items)
        return self._executor.submit(self._stages.prepare, items).result()

    def start(self, start: int, items: list[int]) -> None:
        """Begin preparing ``items`` (to start at position ``start``)."""
        if self._executor is not None and items:
            self.prepared_items += len(items)
            self._ahead = _Ahead(start, items, self._executor.submit(self._stages.prepare, items))

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)


def _as_stages(process: BatchFn[R] | Stages[Any, R]) -> Stages[Any, R]:
    if isinstance(process, Stages):
        return process
    return Stages(prepare=lambda indices: indices, compute=process)


class BatchRunner(Generic[R]):
    """Applies a batch function to items with sizing, monitoring and recovery.

    ``work`` names the kind of work for the OOM handler's ceilings (page
    embedding and query embedding learn separate limits)."""

    def __init__(
        self,
        device: DeviceInfo,
        sizer: AdaptiveBatchSizer | None,
        oom_handler: OOMHandler,
        *,
        monitor: MemoryMonitor | None = None,
        fixed_batch_size: int | None = None,
        prefetch: bool | None = None,
        work: str | None = None,
        prepare_fallback: Callable[[DeviceInfo], object] | None = None,
        cpu_fallback: bool = True,
        cadence: MeasureCadence | None = None,
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
        self.work = work or (sizer.work if sizer is not None else "batch")
        # Without a sizer, where measuring is costly: which batches are measured (shared across runs, where given).
        self.cadence = cadence if cadence is not None else MeasureCadence()
        self.prepare_fallback = prepare_fallback  # readies the CPU for a fallback step (loads a copy)
        # False for work whose batch function cannot move to the CPU (it places its own parts, each of
        # which has its own recovery): its recovery splits and clears the cache, then gives up.
        self.cpu_fallback = cpu_fallback

    def run(
        self,
        costs: Sequence[int],
        process: BatchFn[R] | Stages[Any, R],
        on_batch: Callable[[int], None] | None = None,
        *,
        keep_going: bool = False,
    ) -> tuple[list[R | ItemFailure], RunStats]:
        """Process every item once; results in the order of ``costs``.

        ``on_batch(n)`` is called once for every item, in batches, as each is
        done or given up on. Without ``keep_going`` an item that cannot be
        processed at all raises :class:`~ragged.errors.OutOfMemoryRecoveryError`."""
        stages = _as_stages(process)
        prefetcher = _Prefetcher(stages, self.prefetch and isinstance(process, Stages))
        before = self.handler.stats.copy()
        stats = RunStats(device=self.device.label, items=len(costs))
        try:
            results = self._run(costs, stages, on_batch, prefetcher, stats, keep_going)
        finally:
            prefetcher.close()
        stats.prepared_items = prefetcher.prepared_items
        stats.oom = self.handler.stats - before
        if self.sizer is not None:
            stats.budget_bytes = self.sizer.last_budget_bytes
            stats.budget_warning = self.sizer.budget_warning
            stats.sizing = self.sizer.record()
        return results, stats

    def _run(self, costs: Sequence[int], stages: Stages[Any, R], on_batch: Callable[[int], None] | None,
             prefetcher: _Prefetcher, stats: RunStats, keep_going: bool) -> list[R | ItemFailure]:
        order = sorted(range(len(costs)), key=lambda i: -costs[i])
        results: dict[int, R | ItemFailure] = {}
        start = time.perf_counter()
        pos = 0
        while pos < len(order):
            longest = max(1, costs[order[pos]])
            planned, limit = self._plan(longest)
            size = min(planned, len(order) - pos)
            full = size == planned
            ahead = prefetcher.take(pos)
            if ahead is not None and len(ahead.items) <= limit:
                size = len(ahead.items)  # safe: use what was prepared
            if ahead is not None and len(ahead.items) != size:
                ahead.future.cancel()
                ahead = None
            pos = self._unit(order, costs, pos, size, full, longest, ahead, stages, results, stats, prefetcher,
                             on_batch, keep_going)
        stats.seconds = time.perf_counter() - start
        return [results[i] for i in range(len(costs))]

    def _unit(self, order: list[int], costs: Sequence[int], pos: int, size: int, full: bool, longest: int,
              ahead: _Ahead | None, stages: Stages[Any, R], results: dict[int, R | ItemFailure], stats: RunStats,
              prefetcher: _Prefetcher, on_batch: Callable[[int], None] | None, keep_going: bool) -> int:
        """Run the batch of ``size`` items from ``pos`` as one unit of the
        recovery loop; the position after it."""
        end = pos + size
        batch: list[int] = []

        def learn(attempt: Attempt, available: int | None) -> None:
            if self.sizer is not None and attempt.device.same_device(self.device):
                self.sizer.record_oom(attempt.size, attempt.size * longest, available)
            else:
                self.handler.learn_oom(attempt.device, attempt.size, self.work, available)

        try:
            for attempt in self.handler.recovering(self.device, size, work=self.work, learn=learn,
                                                   cpu_fallback=self.cpu_fallback,
                                                   before_step=self._ready_fallback):
                batch = order[pos : min(pos + attempt.size, end)]
                fresh = attempt.steps == 0 and pos + len(batch) == end
                prepare_next = None
                if fresh and prefetcher.enabled and end < len(order):
                    following = self._following(order, costs, end, size)
                    prepare_next = partial(prefetcher.start, end, following)
                ready = ahead.future if ahead is not None and fresh else None
                ahead = None
                with attempt:
                    out = self._attempt(batch, attempt, stages, stats, longest, prefetcher, ready, prepare_next,
                                        full)
                if not attempt.ok:
                    continue
                results.update(zip(batch, out, strict=True))
                pos += len(batch)
                if on_batch is not None:
                    on_batch(len(batch))
                if not attempt.device.same_device(self.device):
                    stats.cpu_fallback_items += len(batch)
                    return pos  # the CPU took what fitted nowhere else; the rest go back to the device
                self.handler.learn_success(attempt.device, attempt.size, self.work, self._available_now())
                if pos >= end:
                    return pos
        except OutOfMemoryRecoveryError as error:
            if not keep_going:
                raise
            logger.error("{}", error)
            results.update((i, ItemFailure(str(error))) for i in batch)
            stats.failed_items += len(batch)
            if on_batch is not None:
                on_batch(len(batch))
            return pos + len(batch)
        raise AssertionError("recovering() ends by returning or raising")  # pragma: no cover

    def _ready_fallback(self, step: RecoveryStep) -> None:
        """Ready the CPU for a fallback step (load a copy of the model there)."""
        if self.prepare_fallback is not None:
            self.prepare_fallback(step.device)

    def _plan(self, longest: int) -> tuple[int, int]:
        """(size of the next batch, the largest size memory allows now)."""
        if self.sizer is not None:
            limit = self.sizer.memory_limit(load_per_item=longest)
            size = self.sizer.next_batch_size(load_per_item=longest, limit=limit)
        else:
            assert self.fixed_batch_size is not None
            size = limit = self.fixed_batch_size
        limit = self.handler.clamp(self.device, limit, self.work)
        size = self.handler.clamp(self.device, size, self.work)
        return max(1, size), limit

    def _following(self, order: list[int], costs: Sequence[int], start: int, size: int) -> list[int]:
        """The items of the batch predicted to follow one of ``size`` items."""
        if self.sizer is not None:
            size = self.sizer.predict_next(size, load_per_item=max(1, costs[order[start]]))
        size = self.handler.clamp(self.device, size, self.work)
        return order[start : start + size]

    def _available_now(self) -> int | None:
        latest = self.monitor.latest if self.monitor is not None else None
        return latest.info.available if latest is not None else None

    def _measure(self, device: DeviceInfo, load: int) -> bool:
        """Whether to measure this batch's peak: always where it is cheap; where
        it costs time (the CPU), on the sample the sizer asks for (without a
        sizer: as the cadence says, the first batch, then one in ``MEASURE_EVERY``)."""
        if not self.manager.peak_is_costly(device):
            return True
        if self.sizer is not None and device.same_device(self.sizer.device):
            return self.sizer.wants_measurement(load)
        return self.cadence.due()

    def _attempt(
        self,
        batch: list[int],
        attempt: Attempt,
        stages: Stages[Any, R],
        stats: RunStats,
        longest: int,
        prefetcher: _Prefetcher,
        ready: Future[Any] | None,
        prepare_next: Callable[[], None] | None,
        full: bool = True,
    ) -> list[R]:
        """Prepare and compute one batch inside ``attempt`` (which catches an
        OOM), measured against the counters the attempt read as it began."""
        device, before = attempt.device, attempt.before
        measure = self._measure(device, len(batch) * longest)
        if measure:
            self.manager.reset_peak(device)
            before = self.manager.counters(device)  # the window's floor: the CPU handed its kept heap back
        began = time.perf_counter()
        prepared = ready.result() if ready is not None else prefetcher.prepare(batch)
        prepared_at = time.perf_counter()
        if prepare_next is not None:  # only now: one preparation at a time
            prepare_next()
        out = stages.compute(prepared, device)
        done = time.perf_counter()
        peak = measured_peak(before, self.manager.counters(device)) if measure else None
        stats.prepare_seconds += prepared_at - began
        stats.compute_seconds += done - prepared_at
        stats.batch_sizes.append(len(batch))
        stats.batch_peaks.append(peak)
        if self.sizer is not None and device.same_device(self.device):
            self.sizer.record_batch(len(batch), len(batch) * longest, peak, done - began, full=full)
        if self.monitor is not None and device.same_device(self.monitor.device):
            self.monitor.try_snapshot()
        return out
