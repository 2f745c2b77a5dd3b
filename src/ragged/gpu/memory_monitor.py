"""Memory snapshots, bounded history and threshold alerts.

The warning and critical levels come from the one
:class:`~ragged.gpu.policy.MemoryPolicy` (85% and 95% by default), the same
that sizes batches and admits models.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

from loguru import logger

from ragged.errors import ConfigurationError, DeviceError
from ragged.gpu.device_manager import DeviceManager, default_device_manager
from ragged.gpu.policy import MemoryLevel, MemoryPolicy
from ragged.gpu.types import DeviceInfo, MemoryInfo, MemoryUsage


@dataclass(frozen=True)
class MemorySnapshot(MemoryUsage):
    """Memory of one device at one moment (bytes; ``timestamp`` monotonic s)."""

    timestamp: float
    total: int  # bytes
    allocated: int  # bytes
    reserved: int  # bytes
    free: int  # bytes

    @classmethod
    def from_info(cls, info: MemoryInfo, timestamp: float | None = None) -> MemorySnapshot:
        """Build a snapshot from a backend reading."""
        return cls(
            timestamp=time.monotonic() if timestamp is None else timestamp,
            total=info.total,
            allocated=info.allocated,
            reserved=info.reserved,
            free=info.free,
        )

    @property
    def info(self) -> MemoryInfo:
        """The reading this snapshot was taken from."""
        return MemoryInfo(total=self.total, free=self.free, allocated=self.allocated, reserved=self.reserved)


SnapshotCallback = Callable[[MemorySnapshot], None]

__all__ = ["MemoryLevel", "MemoryMonitor", "MemorySnapshot", "SnapshotCallback"]


class MemoryMonitor:
    """Takes snapshots of one device and raises alerts on thresholds.

    Alerts are edge-triggered: a callback fires when utilisation rises into
    its level, not on every snapshot while it stays there. Works for the CPU
    (system RAM) as well as for GPUs. ``warning_threshold_pct`` and
    ``critical_threshold_pct`` override the policy's levels.
    """

    def __init__(
        self,
        device: DeviceInfo,
        device_manager: DeviceManager | None = None,
        *,
        policy: MemoryPolicy | None = None,
        warning_threshold_pct: float | None = None,
        critical_threshold_pct: float | None = None,
        history_size: int = 100,
        on_warning: SnapshotCallback | None = None,
        on_critical: SnapshotCallback | None = None,
    ) -> None:
        policy = policy or MemoryPolicy()
        levels = {k: v for k, v in (("warning_pct", warning_threshold_pct), ("critical_pct", critical_threshold_pct))
                  if v is not None}
        self.policy = replace(policy, **levels) if levels else policy  # validates the levels
        if history_size < 1:
            raise ConfigurationError(f"history_size must be at least 1, got {history_size}.")
        self.device = device
        self.manager = device_manager or default_device_manager()
        self._history: deque[MemorySnapshot] = deque(maxlen=history_size)
        self._warning_callbacks: list[SnapshotCallback] = [on_warning] if on_warning else []
        self._critical_callbacks: list[SnapshotCallback] = [on_critical] if on_critical else []
        self._level = MemoryLevel.NORMAL

    @property
    def warning_threshold_pct(self) -> float:
        """Utilisation (percent) at which the warning callbacks fire."""
        return self.policy.warning_pct

    @property
    def critical_threshold_pct(self) -> float:
        """Utilisation (percent) at which the critical callbacks fire."""
        return self.policy.critical_pct

    @property
    def history(self) -> list[MemorySnapshot]:
        """Snapshots kept so far, oldest first."""
        return list(self._history)

    @property
    def latest(self) -> MemorySnapshot | None:
        """The most recent snapshot, if any."""
        return self._history[-1] if self._history else None

    @property
    def level(self) -> MemoryLevel:
        """The level of the most recent snapshot."""
        return self._level

    def add_warning_callback(self, callback: SnapshotCallback) -> None:
        """Call ``callback`` whenever utilisation rises past the warning level."""
        self._warning_callbacks.append(callback)

    def add_critical_callback(self, callback: SnapshotCallback) -> None:
        """Call ``callback`` whenever utilisation rises past the critical level."""
        self._critical_callbacks.append(callback)

    def classify(self, utilisation_pct: float) -> MemoryLevel:
        """The level that ``utilisation_pct`` falls in."""
        return self.policy.level(utilisation_pct)

    def take_snapshot(self) -> MemorySnapshot:
        """Read the device, keep the snapshot and fire any threshold alert."""
        snapshot = MemorySnapshot.from_info(self.manager.get_device_memory_info(self.device))
        self._history.append(snapshot)
        self._check_thresholds(snapshot)
        return snapshot

    def try_snapshot(self) -> MemorySnapshot | None:
        """:meth:`take_snapshot`, or None when the device cannot be read now."""
        try:
            return self.take_snapshot()
        except DeviceError as exc:
            logger.debug("{}", exc)
            return None

    def _check_thresholds(self, snapshot: MemorySnapshot) -> None:
        level = self.classify(snapshot.utilisation_pct)
        previous, self._level = self._level, level
        order = [MemoryLevel.NORMAL, MemoryLevel.WARNING, MemoryLevel.CRITICAL]
        if order.index(level) <= order.index(previous):
            return
        if level is MemoryLevel.CRITICAL:
            logger.warning(
                "{}: memory at {:.1f}% (critical level {:.0f}%)",
                self.device.label, snapshot.utilisation_pct, self.critical_threshold_pct,
            )
            callbacks = self._critical_callbacks
        else:
            logger.info(
                "{}: memory at {:.1f}% (warning level {:.0f}%)",
                self.device.label, snapshot.utilisation_pct, self.warning_threshold_pct,
            )
            callbacks = self._warning_callbacks
        for callback in callbacks:
            callback(snapshot)

    def get_recommended_batch_size(
        self, current_batch_size: int, target_utilisation_pct: float | None = None
    ) -> int:
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

    def clear_history(self) -> None:
        """Forget every snapshot and reset the alert level."""
        self._history.clear()
        self._level = MemoryLevel.NORMAL
