"""The runtime: ragged's resource manager as one object.

A :class:`Runtime` is built once at each entry point (an ingest run, a
``Searcher``, the server, a Ray worker, ``ragged gpu benchmark``) and passed
down to everything that uses a device. It owns:

- the :class:`~ragged.gpu.device_manager.DeviceManager` (every hardware question),
- the one :class:`~ragged.gpu.policy.MemoryPolicy` (and the batch settings built on it),
- the one :class:`~ragged.gpu.recovery.OOMHandler` (recovery, and what OOMs taught),
- the :class:`~ragged.gpu.model_manager.ModelManager` (which models are where),
- a :class:`~ragged.gpu.memory_monitor.MemoryMonitor` per device and an
  :class:`~ragged.gpu.batch_sizer.AdaptiveBatchSizer` per (device, kind of work).

It is the only place that makes these parts with their defaults: nothing
below it falls back to a second device manager or a second engine. Tests
hand it a device manager over fake backends (``Runtime(DeviceManager([...]))``).
A spec-style call that gets no runtime (``ColPaliEmbedder("...")``) builds
a private one, owned and closed by that object.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from types import TracebackType

from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig, MeasureCadence
from ragged.gpu.device_manager import DeviceHint, DeviceManager, default_device_manager
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.model_manager import ModelManager
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.recovery import OOMHandler, RecoveryOptions
from ragged.gpu.types import DeviceInfo


class Runtime:
    """The resource manager of one program (or one private spec-style object).

    ``idle_timeout_s`` unloads models unused that long (None: kept until
    :meth:`close`); ``recovery`` chooses the OOM strategies."""

    def __init__(self, device_manager: DeviceManager | None = None, *, policy: MemoryPolicy | None = None,
                 batch_config: BatchSizeConfig | None = None, idle_timeout_s: float | None = None,
                 recovery: RecoveryOptions | None = None) -> None:
        self.device_manager = device_manager if device_manager is not None else default_device_manager()
        config = batch_config or BatchSizeConfig()
        self.policy = policy or config.policy
        self.batch_config = replace(config, policy=self.policy)  # one policy, whatever the config carried
        self.oom_handler = OOMHandler.with_options(self.device_manager, recovery or RecoveryOptions())
        self.model_manager = ModelManager(self.device_manager, idle_timeout_s=idle_timeout_s, policy=self.policy)
        self._monitors: dict[str, MemoryMonitor] = {}
        self._sizers: dict[tuple[str, str], AdaptiveBatchSizer] = {}
        self._cadences: dict[tuple[str, str], MeasureCadence] = {}
        self._lock = threading.Lock()

    def with_recovery(self, recovery: RecoveryOptions) -> Runtime:
        """A runtime that shares this one's devices, policy, models and
        monitors but recovers from OOMs its own way, with an engine of its
        own (nothing learnt yet) and sizers of its own. For measuring batch
        sizes with and without recovery on one loaded model."""
        twin = Runtime.__new__(Runtime)
        twin.device_manager, twin.policy, twin.batch_config = self.device_manager, self.policy, self.batch_config
        twin.model_manager, twin._monitors, twin._lock = self.model_manager, self._monitors, self._lock
        twin.oom_handler = OOMHandler.with_options(self.device_manager, recovery)
        twin._sizers, twin._cadences = {}, {}
        return twin

    # -- devices ------------------------------------------------------------

    def device(self, hint: DeviceHint = None) -> DeviceInfo:
        """The device for ``hint`` (None or ``auto``: the best one here)."""
        return self.device_manager.get_optimal_device(hint)

    def monitor_for(self, device: DeviceInfo) -> MemoryMonitor:
        """The memory monitor of ``device`` (one per device, kept)."""
        with self._lock:
            monitor = self._monitors.get(device.label)
            if monitor is None:
                monitor = MemoryMonitor(device, self.device_manager, policy=self.policy)
                self._monitors[device.label] = monitor
            return monitor

    def sizer_for(self, device: DeviceInfo, work: str, *, config: BatchSizeConfig | None = None,
                  prior_bytes_per_load: float | None = None) -> AdaptiveBatchSizer:
        """The batch sizer of ``work`` on ``device``: one per pair, kept, so
        what one call measures sizes the next call's batches. ``work`` names
        the model and its kind of work (``tiny-colpali/pages``); ``config``
        and the prior are used when the sizer is first made (the runtime's
        policy always applies)."""
        key = (device.label, work)
        monitor = self.monitor_for(device)
        with self._lock:
            sizer = self._sizers.get(key)
            if sizer is None:
                sizer = AdaptiveBatchSizer(
                    device, monitor, replace(config or self.batch_config, policy=self.policy),
                    oom_handler=self.oom_handler, prior_bytes_per_load=prior_bytes_per_load, work=work,
                )
                self._sizers[key] = sizer
            return sizer

    def cadence_for(self, device: DeviceInfo, work: str) -> MeasureCadence:
        """Which of ``work``'s fixed-size batches on ``device`` get their peak
        measured where that costs time: one cadence per pair, kept, so a
        measurement is one batch in many, not the first of every call."""
        with self._lock:
            return self._cadences.setdefault((device.label, work), MeasureCadence())

    # -- lifetime -------------------------------------------------------------

    def close(self) -> None:
        """Unload every model and stop the idle reaper."""
        self.model_manager.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["Runtime"]
