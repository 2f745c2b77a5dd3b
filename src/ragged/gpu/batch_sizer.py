"""Adaptive batch sizing: a prior from the model, then measurements.

The planner part is pure (:meth:`MemoryPolicy.batch_budget`, :meth:`MemoryFit.fit`,
:func:`~ragged.gpu.planning.plan_batch_size`, and the throughput search in
:mod:`ragged.gpu.size_search`); :class:`AdaptiveBatchSizer` keeps the state
of one device and applies them: memory sets the largest batch, throughput
chooses below it. "Load" is what a batch costs: padded tokens (items
x longest item) when token counts are known, else the item count.

Unknown is a value here: a memory reading that failed gives no budget
(``None``), and a batch whose peak the backend could not resolve gives no
measurement; neither is read as zero. A fit with no usable slope keeps the
prior, so a budget never silently stops limiting.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

from loguru import logger

from ragged.errors import ConfigurationError
from ragged.gpu.compat.methods import SpecSizing
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.planning import plan_batch_size
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.recovery import OOMHandler
from ragged.gpu.size_search import SizeSearch
from ragged.gpu.throughput import SizingRecord
from ragged.gpu.types import AllocatorCounters, DeviceInfo, MemoryInfo

SNAPSHOT_MAX_AGE_S = 0.5  # a monitor snapshot younger than this stands in for a fresh reading
MIN_MEASURED = 4  # peaks the fit gets before sampling starts, where measuring is costly
MEASURE_EVERY = 16  # then one batch in this many is measured


class MeasureCadence:
    """Which batches of fixed-size work get their peak measured where that
    costs time (the CPU: a measured batch runs about a fifth slower, as it
    faults in again the heap the measurement handed back): the first, then
    one in :data:`MEASURE_EVERY`, counted across every run that shares it
    (the runtime keeps one per device and kind of work). A cadence of each
    run's own would measure the first batch of every call: every document
    of a fixed-batch ingest, every request batch of the server."""

    def __init__(self) -> None:
        self._since = -1  # batches since the last measured one (-1: none measured yet)
        self._lock = threading.Lock()

    def due(self) -> bool:
        """Whether the next batch is measured (counts it)."""
        with self._lock:
            self._since = 0 if self._since < 0 or self._since + 1 >= MEASURE_EVERY else self._since + 1
            return self._since == 0


# The first batch on a CPU, from a reading of how busy other processes keep the cores. Measured on 2
# cores (docs/benchmarks.md, "Adaptive batching"): with a busy loop on one core the tiny presets ran
# fastest at 16-32 in every run (at 8 a fresh sizer reached 0.80-0.96 of that, at 4 only 0.36-0.73);
# with the cores idle, at 1-2 or on a plateau (tiny-colpali at 8-16). A run searches from its first
# size one step at a time, so that step count is what the start decides: in the replay of those
# profiles (benchmarks/sizer_replay.py) starting idle runs at 4 and busy ones at 8 met both targets
# more often than either constant. Unknown load starts at 8; memory still caps it. Without any memory
# reading the first batch is small.
CPU_START = 8  # other processes keep at least BUSY_CORES busy, or unknown
CPU_START_IDLE = 4  # the cores are free
BUSY_CORES = 0.5  # cores' worth of other processes' CPU use from which the machine counts as busy
UNREADABLE_START = 2


@dataclass(frozen=True)
class BatchSizeConfig:
    """Parameters of batch sizing. The memory line comes from ``policy``."""

    min_batch_size: int = 1
    max_batch_size: int = 32
    policy: MemoryPolicy = field(default_factory=MemoryPolicy)
    # The spec's prior: embedding_dim x sequence_length x bytes x overhead.
    embedding_dim: int = 128
    sequence_length: int = 1030
    bytes_per_element: int = 2
    overhead_factor: float = 3.0
    # The first batch: None chooses it (the memory plan on an accelerator; on the CPU 4 or 8, by how
    # busy other processes keep the cores);
    # a number pins it (memory still caps it). Sizes then move one growth step at a time, and only
    # to a size measured faster by more than min_throughput_gain and the noise.
    initial_batch_size: int | None = None
    growth_factor: float = 2.0
    min_throughput_gain: float = 0.03

    def __post_init__(self) -> None:
        if not 1 <= self.min_batch_size <= self.max_batch_size:
            raise ConfigurationError(
                f"Batch bounds must satisfy 1 <= min <= max (got {self.min_batch_size}, {self.max_batch_size})."
            )
        if self.growth_factor <= 1 or (self.initial_batch_size is not None and self.initial_batch_size < 1):
            raise ConfigurationError("growth_factor must exceed 1 and initial_batch_size be at least 1.")
        if self.min_throughput_gain < 0:
            raise ConfigurationError(f"min_throughput_gain must be 0 or more, got {self.min_throughput_gain}.")

    @property
    def target_utilisation(self) -> float:
        """The policy's target share of the device (the spec's name)."""
        return self.policy.target_utilisation

    @property
    def safety_margin(self) -> float:
        """The policy's safety margin (the spec's name)."""
        return self.policy.safety_margin

    @property
    def prior_bytes_per_item(self) -> float:
        """The spec's per-item estimate, used before anything is measured."""
        return self.embedding_dim * self.sequence_length * self.bytes_per_element * self.overhead_factor


def measured_peak(before: AllocatorCounters, after: AllocatorCounters) -> int | None:
    """Bytes a batch needed above what was held before it; None when unknown.

    Uses the allocator's peak when the backend has one; else what the
    allocator holds after the batch (an upper bound on MPS, whose cache
    keeps the blocks the batch used). A peak that does not rise above the
    baseline is below what the backend can resolve: unknown, not zero.
    """
    top = after.peak_allocated if after.peak_allocated is not None else after.reserved
    peak = top - before.allocated
    return peak if peak > 0 else None


@dataclass(frozen=True)
class BatchMeasurement:
    """One finished batch: size, load, peak bytes above baseline (None: unknown), seconds."""

    batch_size: int
    load: int
    peak_bytes: int | None
    seconds: float


@dataclass(frozen=True)
class MemoryFit:
    """peak = base_bytes + bytes_per_load x load, fitted by least squares."""

    base_bytes: float
    bytes_per_load: float

    @classmethod
    def fit(cls, points: list[tuple[int, int | None]]) -> MemoryFit | None:
        """Fit (load, peak_bytes) points; None when there is nothing usable.

        Unknown or non-positive peaks are left out. One distinct load gives a
        line through the origin (conservative); two or more give slope and
        intercept, the intercept kept >= 0 and the slope never below what the
        largest point implies without one.
        """
        usable = [(float(x), float(y)) for x, y in points if x > 0 and y is not None and y > 0]
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


class AdaptiveBatchSizer(SpecSizing):
    """Sizes batches for one device from its memory budget, measured peaks
    and measured throughput.

    Memory gives the largest batch: before any batch has run from the prior
    (per-load bytes the caller passes, else the spec's formula), then from
    a fit of peak memory against load, and the budget now. OOMs are learnt
    by the :class:`OOMHandler` (one owner of the ceilings): the sizer never
    proposes a size above it. Below that limit a
    :class:`~ragged.gpu.size_search.SizeSearch` chooses the size from paired,
    repeated rate samples. The first batch is the memory plan on an
    accelerator; on the CPU it comes from how busy other processes keep the
    cores (``CPU_START_IDLE`` or ``CPU_START``; see :class:`BatchSizeConfig`).
    """

    def __init__(
        self,
        device: DeviceInfo,
        memory_monitor: MemoryMonitor | None = None,
        config: BatchSizeConfig | None = None,
        device_manager: DeviceManager | None = None,
        *,
        oom_handler: OOMHandler,
        prior_bytes_per_load: float | None = None,
        history_size: int = 64,
        work: str = "batch",
    ) -> None:
        if device_manager is not None and device_manager is not oom_handler.manager:
            raise ConfigurationError("The sizer and its OOM handler must share one device manager.")
        self.device = device
        self.monitor = memory_monitor
        self.config = config or BatchSizeConfig()
        self.manager = oom_handler.manager
        self.oom_handler = oom_handler
        self.work = work
        self.prior_bytes_per_load = prior_bytes_per_load
        self._measurements: deque[BatchMeasurement] = deque(maxlen=history_size)
        self._since_measured = 0  # batches since the last measured peak (where measuring is costly)
        self._costly_sample = False  # the batch being run is measured where that slows it: not a rate sample
        self._search = SizeSearch(growth_factor=self.config.growth_factor,
                                  min_gain=self.config.min_throughput_gain,
                                  min_size=self.config.min_batch_size, name=f"{device.label} {work}")
        self._oom_slope = 0.0
        self._last_size: int | None = None
        self._held_limit: int | None = None  # the limit while the device cannot be read
        self._budget: int | None = None
        self.budget_warning: str | None = None  # set once when the budget ran out

    @property
    def policy(self) -> MemoryPolicy:
        """The memory policy the budget comes from."""
        return self.config.policy

    @property
    def ceiling(self) -> int | None:
        """The largest batch size still allowed after OOMs (None: no limit)."""
        return self.oom_handler.ceiling(self.device, self.work)

    @property
    def measurements(self) -> list[BatchMeasurement]:
        """Finished batches, oldest first."""
        return list(self._measurements)

    @property
    def last_budget_bytes(self) -> int | None:
        """The memory budget of the latest decision, in bytes (None: unknown)."""
        return self._budget

    def fit(self) -> MemoryFit | None:
        """The current memory model, including what OOMs taught."""
        fitted = MemoryFit.fit([(m.load, m.peak_bytes) for m in self._measurements])
        if fitted is None:
            return MemoryFit(0.0, self._oom_slope) if self._oom_slope else None
        if fitted.bytes_per_load < self._oom_slope:
            return MemoryFit(fitted.base_bytes, self._oom_slope)
        return fitted

    def _prior(self) -> float:
        return self.prior_bytes_per_load or self.config.prior_bytes_per_item

    def _reading(self) -> MemoryInfo | None:
        """The monitor's latest snapshot if under ``SNAPSHOT_MAX_AGE_S`` old (so
        the per-batch path reads the device once, not twice), else a reading."""
        latest = self.monitor.latest if self.monitor is not None else None
        if latest is not None and time.monotonic() - latest.timestamp <= SNAPSHOT_MAX_AGE_S:
            return latest.info
        return self.manager.try_memory_info(self.device)

    def _budget_now(self) -> int | None:
        info = self._reading()
        self._budget = self.policy.batch_budget(info)
        if self._budget == 0 and self.budget_warning is None and info is not None:
            self.budget_warning = (
                f"{self.device.label} is {info.utilisation_pct:.0f}% in use, at or above the "
                f"{100 * self.policy.line_fraction:.0f}% line ({self.policy.describe()}): batches run one item "
                "at a time; free memory on the device or raise the memory target"
            )
            logger.warning("{}", self.budget_warning)
        return self._budget

    def memory_limit(self, load_per_item: float = 1.0) -> int:
        """The largest batch that memory allows now (fit, else prior).

        With no reading of the device the size of the last batch before the
        reading was lost stands (no growth), and stays the limit while it is
        lost: a smaller probe batch must not lower it."""
        budget = self._budget_now()
        if budget is None:
            if self._held_limit is None:
                self._held_limit = self._last_size or self.config.initial_batch_size or UNREADABLE_START
            return self.oom_handler.clamp(self.device, self._held_limit, self.work)
        self._held_limit = None
        fitted = self.fit()
        base, per_load = (fitted.base_bytes, fitted.bytes_per_load) if fitted is not None else (0.0, self._prior())
        return plan_batch_size(
            budget_bytes=budget,
            base_bytes=base,
            bytes_per_load=per_load,
            load_per_item=load_per_item,
            config=self.config,
            ceiling=self.ceiling,
        )

    def _first_size(self, limit: int) -> int:
        """The first batch: pinned by the config, else the memory plan where a
        reading exists (an accelerator); on the CPU ``CPU_START_IDLE`` where
        other processes leave the cores free, else ``CPU_START``."""
        if self.config.initial_batch_size is not None:
            return min(limit, self.config.initial_batch_size)
        if self._budget is None:
            return min(limit, UNREADABLE_START)
        if self.device.is_accelerator:
            return limit
        busy = self.manager.busy_elsewhere(self.device)
        start = CPU_START_IDLE if busy is not None and busy < BUSY_CORES else CPU_START
        logger.debug("{} {}: first batch {} (other processes use {} cores)", self.device.label, self.work, start,
                     "unknown" if busy is None else f"{busy:.2f}")
        return min(limit, start)

    def next_batch_size(self, load_per_item: float = 1.0, *, limit: int | None = None) -> int:
        """The size of the next batch: the throughput search's choice below the
        memory limit (``limit``: a :meth:`memory_limit` the caller just took)."""
        limit = self.memory_limit(load_per_item) if limit is None else limit
        limit = max(self.config.min_batch_size, min(limit, self.config.max_batch_size))
        if self._search.incumbent is None:
            self._search.begin(self._first_size(limit))
        return max(self.config.min_batch_size, self._search.next_size(limit))

    def predict_next(self, after_size: int, load_per_item: float = 1.0) -> int:
        """The size the next batch will likely have if a batch of ``after_size``
        succeeds now: the guess preparation ahead uses. Uses the latest budget;
        reads nothing."""
        limit = self.config.max_batch_size
        if self._budget is not None:
            fitted = self.fit()
            per_load = fitted.bytes_per_load if fitted is not None else self._prior()
            base = fitted.base_bytes if fitted is not None else 0.0
            limit = plan_batch_size(budget_bytes=self._budget, base_bytes=base, bytes_per_load=per_load,
                                    load_per_item=load_per_item, config=self.config, ceiling=self.ceiling)
        else:
            limit = min(limit, self._last_size or after_size)
        return max(self.config.min_batch_size, self._search.predict_after(after_size, limit))

    def record(self) -> SizingRecord:
        """What the throughput search has learnt: sizes chosen over time, rates per size."""
        return self._search.record()

    def wants_measurement(self, load: int) -> bool:
        """Whether a batch of ``load`` should have its peak measured where
        measuring costs time: while the fit has fewer than ``MIN_MEASURED``
        peaks, for a load larger than any measured (the fit would
        extrapolate), and then one batch in ``MEASURE_EVERY`` (to follow drift)."""
        self._since_measured += 1
        loads = [m.load for m in self._measurements if m.peak_bytes is not None]
        if len(loads) < MIN_MEASURED or load > max(loads) or self._since_measured >= MEASURE_EVERY:
            self._since_measured = 0
            self._costly_sample = True
            return True
        return False

    def record_batch(self, batch_size: int, load: int, peak_bytes: int | None, seconds: float,
                     *, full: bool = True) -> None:
        """Feed back one finished batch (``peak_bytes`` None when unknown).

        ``full`` is False for a batch cut short by the end of the items: its
        speed counts for the size it had, but the next batch is planned from
        the size before it. The speed of a batch whose peak was measured where
        measuring slows it (:meth:`wants_measurement`) is not a sample."""
        self._measurements.append(BatchMeasurement(batch_size, load, peak_bytes, seconds))
        usable = not self._costly_sample
        self._costly_sample = False
        self._search.observe(batch_size, load / seconds if seconds > 0 else None, usable=usable)
        if full or self._last_size is None:
            self._last_size = batch_size

    def record_oom(self, batch_size: int, load: int, available: int | None = None) -> None:
        """An OOM at ``batch_size``: the handler learns the ceiling, and the
        memory model learns that ``load`` needs more than the budget had."""
        self.oom_handler.learn_oom(self.device, batch_size, self.work, available)
        self._costly_sample = False
        if load > 0 and self._budget:
            self._oom_slope = max(self._oom_slope, self._budget / load)
        self._last_size = max(1, min(self._last_size or batch_size, batch_size - 1))
