"""The spec's methods, as mixins of the classes the spec names them on.

Each is a thin layer over what the engine already has; none is called by
ragged itself (see :mod:`ragged.gpu.compat`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ragged.errors import ConfigurationError
from ragged.gpu.planning import plan_batch_size
from ragged.gpu.policy import MemoryLevel, MemoryPolicy

if TYPE_CHECKING:
    from ragged.gpu.batch_sizer import BatchSizeConfig, MemoryFit
    from ragged.gpu.memory_monitor import MemoryMonitor, MemorySnapshot
    from ragged.gpu.recovery import OOMHandler
    from ragged.gpu.types import DeviceInfo, MemoryInfo

SnapshotCallback = Callable[["MemorySnapshot"], None]


def memory_budget(info: MemoryInfo | None, config: BatchSizeConfig | MemoryPolicy) -> int | None:
    """Bytes one batch may use on top of what is in use now (None: unknown).

    The spec's ``total x (target - margin)`` ignores the model and other
    processes; here what is really in use counts against that line."""
    policy = config if isinstance(config, MemoryPolicy) else config.policy
    return policy.batch_budget(info)


class _Sizer(Protocol):
    device: DeviceInfo
    monitor: MemoryMonitor | None
    config: BatchSizeConfig
    oom_handler: OOMHandler
    work: str

    @property
    def policy(self) -> MemoryPolicy: ...

    @property
    def ceiling(self) -> int | None: ...

    def memory_limit(self, load_per_item: float = 1.0) -> int: ...

    def fit(self) -> MemoryFit | None: ...

    def _budget_now(self) -> int | None: ...


class SpecSizing:
    """``calculate_batch_size`` and ``adjust_batch_size`` of the spec's
    :class:`~ragged.gpu.batch_sizer.AdaptiveBatchSizer`."""

    def calculate_batch_size(self: _Sizer, bytes_per_item: float | None = None, load_per_item: float = 1.0) -> int:
        """Batch size from memory alone (the spec's calculation, budgeted
        from what is really free); ``bytes_per_item`` overrides the model."""
        if bytes_per_item is None:
            return self.memory_limit(load_per_item)
        if bytes_per_item <= 0:
            raise ConfigurationError(f"bytes_per_item must be positive, got {bytes_per_item}.")
        budget = self._budget_now()
        if budget is None:
            return self.config.min_batch_size
        return plan_batch_size(budget_bytes=budget, base_bytes=0.0, bytes_per_load=bytes_per_item,
                               load_per_item=1.0, config=self.config, ceiling=self.ceiling)

    def adjust_batch_size(self: _Sizer, current_batch_size: int) -> int:
        """Adjust a running batch size from the monitor's latest reading,
        never above the OOM ceiling nor the measured memory limit."""
        size = current_batch_size
        if self.monitor is not None:
            size = self.monitor.get_recommended_batch_size(
                current_batch_size, target_utilisation_pct=100.0 * self.policy.target_utilisation
            )
        if self.fit() is not None:
            size = min(size, self.memory_limit())
        size = self.oom_handler.clamp(self.device, size, self.work)
        return max(self.config.min_batch_size, min(self.config.max_batch_size, size))


class _Monitor(Protocol):
    policy: MemoryPolicy

    @property
    def latest(self) -> MemorySnapshot | None: ...

    def take_snapshot(self) -> MemorySnapshot: ...

    def classify(self, utilisation_pct: float) -> MemoryLevel: ...


class SpecMonitoring:
    """Threshold callbacks and ``get_recommended_batch_size`` of the spec's
    :class:`~ragged.gpu.memory_monitor.MemoryMonitor`."""

    _callbacks: dict[MemoryLevel, list[SnapshotCallback]]

    def _init_callbacks(self, on_warning: SnapshotCallback | None, on_critical: SnapshotCallback | None) -> None:
        self._callbacks = {MemoryLevel.WARNING: [on_warning] if on_warning else [],
                           MemoryLevel.CRITICAL: [on_critical] if on_critical else []}

    def add_warning_callback(self, callback: SnapshotCallback) -> None:
        """Call ``callback`` whenever utilisation rises past the warning level."""
        self._callbacks[MemoryLevel.WARNING].append(callback)

    def add_critical_callback(self, callback: SnapshotCallback) -> None:
        """Call ``callback`` whenever utilisation rises past the critical level."""
        self._callbacks[MemoryLevel.CRITICAL].append(callback)

    def _level_rose(self, level: MemoryLevel, snapshot: MemorySnapshot) -> None:
        for callback in self._callbacks.get(level, ()):
            callback(snapshot)

    def get_recommended_batch_size(self: _Monitor, current_batch_size: int,
                                   target_utilisation_pct: float | None = None) -> int:
        """A batch size that moves utilisation towards the target (the
        policy's, 75% by default).

        Above the critical level the batch is halved, above the warning
        level cut by a quarter. Below the target it grows in proportion,
        at most doubling; since utilisation includes fixed memory (weights,
        other processes), proportional growth never overshoots the target.
        """
        if current_batch_size < 1:
            raise ConfigurationError(f"Batch size must be at least 1, got {current_batch_size}.")
        if target_utilisation_pct is None:
            target_utilisation_pct = 100.0 * self.policy.target_utilisation
        snapshot = self.latest or self.take_snapshot()
        util = snapshot.utilisation_pct
        level = self.classify(util)
        if level is MemoryLevel.CRITICAL:
            return max(1, current_batch_size // 2)
        if level is MemoryLevel.WARNING:
            return max(1, math.floor(current_batch_size * 0.75))
        if util <= 0 or util >= target_utilisation_pct:
            return current_batch_size
        grown = math.floor(current_batch_size * target_utilisation_pct / util)
        return max(current_batch_size, min(2 * current_batch_size, grown))


class _Embedder(Protocol):
    def embed_images(self, images: Sequence[Any], on_batch: Callable[[int], None] | None = None) -> list[Any]: ...


class SpecEmbedding:
    """``embed_batch`` of the spec's ColPali embedder."""

    def embed_batch(self: _Embedder, images: Sequence[Any]) -> list[Any]:
        """The spec's name for ``embed_images``: one (tokens, dim) float32 array per page."""
        return self.embed_images(images)


__all__ = ["SnapshotCallback", "SpecEmbedding", "SpecMonitoring", "SpecSizing", "memory_budget"]
