"""Model lifecycle: load through a memory check, make room, unload when idle.

Unloading moves a model's tensors to the ``meta`` device, so its memory is
freed even while other objects still refer to the module; the next request
loads it again.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType

import torch
from loguru import logger

from ragged.gpu.device_manager import DeviceManager, default_device_manager
from ragged.gpu.types import DeviceInfo

Loader = Callable[[DeviceInfo], torch.nn.Module]
_GB = 1024**3


@dataclass
class ManagedModel:
    """One model the manager holds."""

    key: str
    model: torch.nn.Module
    device: DeviceInfo
    size_bytes: int
    last_used: float
    pins: int = 0
    on_fallback: bool = False


class ModelManager:
    """Loads models where they fit and releases those no longer needed.

    ``load`` checks the model's size against free memory on the device; if
    it does not fit, idle models on that device are unloaded, least recently
    used first; if it still does not fit, the model goes to the CPU with a
    warning. Models unused for ``idle_timeout_s`` are unloaded on the next
    call (or by a background reaper, if started). Use as a context manager,
    or call :meth:`close`.
    """

    def __init__(
        self,
        device_manager: DeviceManager | None = None,
        *,
        idle_timeout_s: float | None = 300.0,
        headroom: float = 0.10,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = device_manager or default_device_manager()
        self.idle_timeout_s = idle_timeout_s
        self.headroom = headroom
        self._clock = clock
        self._models: dict[str, ManagedModel] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None

    @property
    def loaded(self) -> dict[str, ManagedModel]:
        """Models currently held, by key."""
        with self._lock:
            return dict(self._models)

    def fits(self, size_bytes: int, device: DeviceInfo) -> bool:
        """True when ``size_bytes`` (plus headroom) fits in free memory now."""
        info = self.manager.get_device_memory_info(device)
        free = info.free + max(0, info.reserved - info.allocated)
        return size_bytes * (1.0 + self.headroom) <= free

    def load(self, key: str, loader: Loader, size_bytes: int, device: DeviceInfo) -> torch.nn.Module:
        """The model under ``key``, loaded onto ``device`` if not yet held."""
        with self._lock:
            self.unload_idle()
            held = self._models.get(key)
            if held is not None:
                held.last_used = self._clock()
                return held.model
            target = self._place(key, size_bytes, device)
            model = loader(target)
            self._models[key] = ManagedModel(
                key, model, target, size_bytes, self._clock(), on_fallback=not target.same_device(device)
            )
            return model

    def _place(self, key: str, size_bytes: int, device: DeviceInfo) -> DeviceInfo:
        if not device.is_accelerator or self.fits(size_bytes, device):
            return device
        for victim in sorted(self._models.values(), key=lambda m: m.last_used):
            if victim.pins or not victim.device.same_device(device):
                continue
            logger.info("Unloading {} to make room for {}", victim.key, key)
            self.unload(victim.key)
            if self.fits(size_bytes, device):
                return device
        logger.warning(
            "{} needs {:.2f} GB but {} has too little free memory; loading it on the CPU (slower)",
            key, size_bytes / _GB, device.label,
        )
        return self.manager.cpu()

    def get(self, key: str) -> torch.nn.Module | None:
        """The model under ``key`` if held (marks it used), else None."""
        with self._lock:
            held = self._models.get(key)
            if held is None:
                return None
            held.last_used = self._clock()
            return held.model

    @contextmanager
    def using(self, key: str) -> Iterator[torch.nn.Module]:
        """Pin the model under ``key`` while the block runs (never unloaded)."""
        with self._lock:
            held = self._models.get(key)
            if held is None:
                raise KeyError(f"Model {key!r} is not loaded.")
            held.pins += 1
        try:
            yield held.model
        finally:
            with self._lock:
                held.pins -= 1
                held.last_used = self._clock()

    def unload(self, key: str) -> bool:
        """Free the model under ``key``; False when it was not held."""
        with self._lock:
            held = self._models.pop(key, None)
        if held is None:
            return False
        held.model.to("meta")  # frees storage even if the module is referenced elsewhere
        gc.collect()
        self.manager.clear_cache(held.device)
        return True

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload every unpinned model idle longer than the timeout."""
        if self.idle_timeout_s is None:
            return []
        now = self._clock() if now is None else now
        with self._lock:
            idle = [
                m.key for m in self._models.values() if not m.pins and now - m.last_used > self.idle_timeout_s
            ]
        for key in idle:
            logger.info("Unloading idle model {}", key)
            self.unload(key)
        return idle

    def start_reaper(self, interval_s: float = 30.0) -> None:
        """Check for idle models every ``interval_s`` in a daemon thread."""
        if self._reaper is not None:
            return

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.unload_idle()

        self._reaper = threading.Thread(target=loop, name="ragged-model-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stop the reaper and unload every model."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
        for key in list(self._models):
            self.unload(key)

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
