"""Memory snapshots, bounded history and threshold alerts.

The warning and critical levels come from the one
:class:`~ragged.gpu.policy.MemoryPolicy` (85% and 95% by default), the same
that sizes batches and admits models. The batch runner reads the device
through the monitor once per batch, and the sizer reuses that reading. The
spec's callbacks and batch-size recommendation are in
:mod:`ragged.gpu.compat`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, replace

from loguru import logger

from ragged.errors import ConfigurationError, DeviceError
from ragged.gpu.compat.methods import SnapshotCallback, SpecMonitoring
from ragged.gpu.device_manager import DeviceManager
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


__all__ = ["MemoryLevel", "MemoryMonitor", "MemorySnapshot", "SnapshotCallback"]


class MemoryMonitor(SpecMonitoring):
    """Takes snapshots of one device and raises alerts on thresholds.

    Alerts are edge-triggered: a callback fires when utilisation rises into
    its level, not on every snapshot while it stays there. Works for the CPU
    (system RAM) as well as for GPUs. ``warning_threshold_pct`` and
    ``critical_threshold_pct`` override the policy's levels.
    """

    def __init__(
        self,
        device: DeviceInfo,
        device_manager: DeviceManager,
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
        self.manager = device_manager
        self._history: deque[MemorySnapshot] = deque(maxlen=history_size)
        self._init_callbacks(on_warning, on_critical)
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
        else:
            logger.info(
                "{}: memory at {:.1f}% (warning level {:.0f}%)",
                self.device.label, snapshot.utilisation_pct, self.warning_threshold_pct,
            )
        self._level_rose(level, snapshot)

    def clear_history(self) -> None:
        """Forget every snapshot and reset the alert level."""
        self._history.clear()
        self._level = MemoryLevel.NORMAL
