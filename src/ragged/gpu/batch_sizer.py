"""Adaptive batch sizing: a prior from the spec's formula, then measurements.

The planner part is pure (:func:`memory_budget`, :meth:`MemoryFit.fit`,
:func:`plan_batch_size`); :class:`AdaptiveBatchSizer` keeps the state of one
run and applies them. "Load" is what a batch costs: padded tokens (items x
longest item) when token counts are known, else the item count.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import dataclass

from ragged.errors import ConfigurationError
from ragged.gpu.device_manager import DeviceManager, default_device_manager
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.types import AllocatorCounters, DeviceInfo, MemoryInfo

SNAPSHOT_MAX_AGE_S = 0.5  # a monitor snapshot younger than this stands in for a fresh reading


@dataclass(frozen=True)
class BatchSizeConfig:
    """Parameters of batch sizing; fractions are of the device's total memory."""

    min_batch_size: int = 1
    max_batch_size: int = 32
    target_utilisation: float = 0.75
    safety_margin: float = 0.10
    # The spec's prior: embedding_dim x sequence_length x bytes x overhead.
    embedding_dim: int = 128
    sequence_length: int = 1030
    bytes_per_element: int = 2
    overhead_factor: float = 3.0
    # Growth: the first batch is small; each later one at most doubles, and
    # growing stops once a larger batch is not faster by min_throughput_gain.
    initial_batch_size: int = 2
    growth_factor: float = 2.0
    min_throughput_gain: float = 0.03

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ConfigurationError(
                f"Batch bounds must satisfy 1 <= min <= max (got {self.min_batch_size}, {self.max_batch_size})."
            )
        if not 0 < self.target_utilisation <= 1 or not 0 <= self.safety_margin < self.target_utilisation:
            raise ConfigurationError(
                "target_utilisation must be in (0, 1] and safety_margin in [0, target_utilisation)."
            )
        if self.growth_factor <= 1 or self.initial_batch_size < 1:
            raise ConfigurationError("growth_factor must exceed 1 and initial_batch_size be at least 1.")

    @property
    def prior_bytes_per_item(self) -> float:
        """The spec's per-item estimate, used before anything is measured."""
        return self.embedding_dim * self.sequence_length * self.bytes_per_element * self.overhead_factor


def memory_budget(info: MemoryInfo, config: BatchSizeConfig) -> int:
    """Bytes one batch may use on top of what is held now.

    The spec's ``total x (target - margin)`` ignores the model and other
    processes; here the headroom to that line is counted from what is really
    in use, and never exceeds free memory less the safety margin. Blocks our
    own caching allocator holds but does not use count as free.
    """
    reusable = max(0, info.reserved - info.allocated)
    free = min(info.total, info.free + reusable)
    used = info.total - free
    headroom = info.total * (config.target_utilisation - config.safety_margin) - used
    return int(max(0.0, min(headroom, free * (1.0 - config.safety_margin))))


def measured_peak(before: AllocatorCounters, after: AllocatorCounters) -> int:
    """Bytes a batch needed above what was held before it.

    Uses the allocator's peak when the backend has one; else what the
    allocator holds after the batch (an upper bound on MPS, whose cache
    keeps the blocks the batch used).
    """
    top = after.peak_allocated if after.peak_allocated is not None else after.reserved
    return max(0, top - before.allocated)


@dataclass(frozen=True)
class BatchMeasurement:
    """One finished batch: size, load, peak bytes above baseline, seconds."""

    batch_size: int
    load: int
    peak_bytes: int
    seconds: float


@dataclass(frozen=True)
class MemoryFit:
    """peak = base_bytes + bytes_per_load x load, fitted by least squares."""

    base_bytes: float
    bytes_per_load: float

    @classmethod
    def fit(cls, points: list[tuple[int, int]]) -> MemoryFit | None:
        """Fit (load, peak_bytes) points; None when there is nothing usable.

        One distinct load gives a line through the origin (conservative);
        two or more give slope and intercept, the intercept kept >= 0 and the
        slope never below what the largest point implies without one.
        """
        usable = [(float(x), float(y)) for x, y in points if x > 0]
        if not usable:
            return None
        xs = {x for x, _ in usable}
        through_origin = max(y / x for x, y in usable)
        if len(xs) < 2:
            return cls(0.0, through_origin)
        n = len(usable)
        mx = sum(x for x, _ in usable) / n
        my = sum(y for _, y in usable) / n
        sxx = sum((x - mx) ** 2 for x, _ in usable)
        slope = sum((x - mx) * (y - my) for x, y in usable) / sxx
        base = my - slope * mx
        if slope <= 0 or base < 0:
            return cls(0.0, through_origin)
        return cls(base, slope)

    def predict(self, load: float) -> float:
        """Predicted peak bytes for ``load``."""
        return self.base_bytes + self.bytes_per_load * load


def plan_batch_size(
    *,
    budget_bytes: int,
    base_bytes: float,
    bytes_per_load: float,
    load_per_item: float,
    config: BatchSizeConfig,
    ceiling: int | None = None,
) -> int:
    """The largest batch whose predicted peak fits the budget, clamped."""
    upper = config.max_batch_size if ceiling is None else min(config.max_batch_size, ceiling)
    upper = max(config.min_batch_size, upper)
    per_item = bytes_per_load * max(load_per_item, 1e-9)
    if per_item <= 0:
        return upper
    fits = math.floor((budget_bytes - base_bytes) / per_item)
    return max(config.min_batch_size, min(upper, fits))


class AdaptiveBatchSizer:
    """Sizes batches for one device from free memory and measured peaks.

    Before any batch has run it uses the prior (the spec's formula, or a
    per-item estimate the caller passes). After each batch it refits peak
    memory against load and sizes the next batch from the fit and free
    memory; it grows at most by ``growth_factor`` per batch and only while
    throughput grows. An OOM at size b caps every later batch below b.
    """

    def __init__(
        self,
        device: DeviceInfo,
        memory_monitor: MemoryMonitor | None = None,
        config: BatchSizeConfig | None = None,
        device_manager: DeviceManager | None = None,
        *,
        prior_bytes_per_load: float | None = None,
        history_size: int = 64,
    ) -> None:
        self.device = device
        self.monitor = memory_monitor
        self.config = config or BatchSizeConfig()
        self.manager = device_manager or (memory_monitor.manager if memory_monitor else default_device_manager())
        self.prior_bytes_per_load = prior_bytes_per_load
        self._measurements: deque[BatchMeasurement] = deque(maxlen=history_size)
        self._throughput: dict[int, float] = {}  # batch size -> load per second
        self._ceiling: int | None = None
        self._oom_slope = 0.0
        self._growth_stopped = False
        self._last_size: int | None = None
        self._budget: int | None = None

    @property
    def ceiling(self) -> int | None:
        """The largest batch size still allowed after OOMs (None: no OOM yet)."""
        return self._ceiling

    @property
    def measurements(self) -> list[BatchMeasurement]:
        """Finished batches, oldest first."""
        return list(self._measurements)

    @property
    def last_budget_bytes(self) -> int | None:
        """The memory budget used for the latest decision, in bytes."""
        return self._budget

    def fit(self) -> MemoryFit | None:
        """The current memory model, including what OOMs taught."""
        fitted = MemoryFit.fit([(m.load, m.peak_bytes) for m in self._measurements])
        if fitted is None:
            if self._oom_slope:
                return MemoryFit(0.0, self._oom_slope)
            return None
        if fitted.bytes_per_load < self._oom_slope:
            return MemoryFit(fitted.base_bytes, self._oom_slope)
        return fitted

    def _budget_now(self) -> int:
        info = self._fresh_reading() or self.manager.get_device_memory_info(self.device)
        self._budget = memory_budget(info, self.config)
        return self._budget

    def _fresh_reading(self) -> MemoryInfo | None:
        """The monitor's latest snapshot if under ``SNAPSHOT_MAX_AGE_S`` old, so
        the per-batch path reads the device once, not twice."""
        latest = self.monitor.latest if self.monitor is not None else None
        if latest is None or time.monotonic() - latest.timestamp > SNAPSHOT_MAX_AGE_S:
            return None
        return MemoryInfo(total=latest.total, free=latest.free, allocated=latest.allocated, reserved=latest.reserved)

    def memory_limit(self, load_per_item: float = 1.0) -> int:
        """The largest batch that memory allows now (fit, else prior)."""
        fitted = self.fit()
        if fitted is not None:
            base, per_load = fitted.base_bytes, fitted.bytes_per_load
        else:
            base, per_load = 0.0, self.prior_bytes_per_load or self.config.prior_bytes_per_item
        return plan_batch_size(
            budget_bytes=self._budget_now(),
            base_bytes=base,
            bytes_per_load=per_load,
            load_per_item=load_per_item,
            config=self.config,
            ceiling=self._ceiling,
        )

    def calculate_batch_size(
        self, bytes_per_item: float | None = None, load_per_item: float = 1.0
    ) -> int:
        """Batch size from memory alone (the spec's calculation, budgeted
        from real free memory); ``bytes_per_item`` overrides the prior."""
        if bytes_per_item is not None:
            if bytes_per_item <= 0:
                raise ConfigurationError(f"bytes_per_item must be positive, got {bytes_per_item}.")
            return plan_batch_size(
                budget_bytes=self._budget_now(),
                base_bytes=0.0,
                bytes_per_load=bytes_per_item,
                load_per_item=1.0,
                config=self.config,
                ceiling=self._ceiling,
            )
        return self.memory_limit(load_per_item)

    def next_batch_size(self, load_per_item: float = 1.0) -> int:
        """The size of the next batch: memory limit and growth policy together."""
        limit = self.memory_limit(load_per_item)
        if self._last_size is None:
            size = min(limit, self.config.initial_batch_size)
        elif self._growth_stopped:
            size = min(limit, self._best_size())
        else:
            size = min(limit, max(self._last_size + 1, math.floor(self._last_size * self.config.growth_factor)))
        return max(self.config.min_batch_size, size)

    def _best_size(self) -> int:
        if not self._throughput:
            return self._last_size or self.config.min_batch_size
        # The smallest size within the gain threshold of the fastest: the
        # same speed for less memory.
        fastest = max(self._throughput.values())
        floor = fastest / (1 + self.config.min_throughput_gain)
        return min(size for size, rate in self._throughput.items() if rate >= floor)

    def record_batch(self, batch_size: int, load: int, peak_bytes: int, seconds: float) -> None:
        """Feed back one finished batch."""
        self._measurements.append(BatchMeasurement(batch_size, load, peak_bytes, seconds))
        if seconds > 0:
            rate = load / seconds
            old = self._throughput.get(batch_size)
            self._throughput[batch_size] = rate if old is None else 0.5 * (old + rate)
            smaller = [s for s in self._throughput if s < batch_size]
            if smaller and not self._growth_stopped:
                best_smaller = max(self._throughput[s] for s in smaller)
                if self._throughput[batch_size] < best_smaller * (1 + self.config.min_throughput_gain):
                    self._growth_stopped = True
        self._last_size = batch_size

    def record_oom(self, batch_size: int, load: int) -> None:
        """An OOM at ``batch_size``: never try that size or above again, and
        learn that ``load`` needs more than the budget."""
        ceiling = batch_size - 1 if self._ceiling is None else min(self._ceiling, batch_size - 1)
        self._ceiling = max(self.config.min_batch_size, ceiling)
        if load > 0 and self._budget:
            self._oom_slope = max(self._oom_slope, self._budget / load)
        self._last_size = min(self._last_size or batch_size, self._ceiling)

    def adjust_batch_size(self, current_batch_size: int) -> int:
        """Adjust a running batch size from the monitor's latest reading,
        never above the OOM ceiling nor the measured memory limit."""
        size = current_batch_size
        if self.monitor is not None:
            size = self.monitor.get_recommended_batch_size(
                current_batch_size, target_utilisation_pct=100.0 * self.config.target_utilisation
            )
        if self.fit() is not None:
            size = min(size, self.memory_limit())
        if self._ceiling is not None:
            size = min(size, self._ceiling)
        return max(self.config.min_batch_size, min(self.config.max_batch_size, size))
