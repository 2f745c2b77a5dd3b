"""Device detection and selection.

Auto-selection order is the order of the backends list: by default the
registry's (:mod:`ragged.gpu.registry`: CUDA, XPU, MPS, then the CPU). An
explicit hint is honoured or refused with a clear error; it never falls
back silently.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any, TypeAlias

from loguru import logger

from ragged.errors import DeviceError, DeviceUnavailableError
from ragged.gpu import registry
from ragged.gpu.types import AllocatorCounters, DeviceInfo, DeviceType, MemoryInfo, ProcessMemory

if TYPE_CHECKING:
    import torch

    from ragged.gpu.backends.base import DeviceBackend

DeviceHint: TypeAlias = "str | torch.device | DeviceInfo | None"

_GIB = 1024**3


def _usage() -> str:
    return f"use one of {registry.device_choices()}"


def parse_device_hint(hint: DeviceHint) -> tuple[DeviceType, int | None] | None:
    """Turn a user's device hint into (kind, index); None means auto.

    Accepts ``"auto"``, ``"cuda"``, ``"cuda:1"``, ``"xpu"``, ``"mps"``,
    ``"cpu"``, a :class:`torch.device` or a :class:`DeviceInfo`. The user's
    text is parsed here once; everything past this point is typed.
    """
    if hint is None:
        return None
    if isinstance(hint, DeviceInfo):
        return hint.device_type, hint.device_id
    if isinstance(hint, str):
        text = hint.strip().lower()
    elif _is_torch_device(hint):
        text = str(hint)
    else:
        raise DeviceUnavailableError(f"Device hint {hint!r} is not a string or torch.device.")
    if text == "auto":
        return None
    kind_text, _, index_text = text.partition(":")
    try:
        kind = DeviceType(kind_text)
    except ValueError:
        raise DeviceUnavailableError(f"Unknown device {text!r}: {_usage()}.") from None
    if not index_text:
        return kind, None
    if not index_text.isdigit() or (not kind.indexed and index_text != "0"):
        raise DeviceUnavailableError(f"Unknown device {text!r}: {_usage()}.")
    return kind, int(index_text)


def _is_torch_device(hint: Any) -> bool:
    return type(hint).__name__ == "device" and type(hint).__module__ == "torch"


class DeviceManager:
    """Finds the machine's devices and picks one for a job.

    All hardware questions go through ``backends`` (one per device kind, in
    auto-selection priority), so tests can pass fakes.
    """

    def __init__(self, backends: Sequence[DeviceBackend] | None = None) -> None:
        self._candidates = list(backends) if backends is not None else registry.build_backends()
        self._backends: dict[DeviceType, DeviceBackend] = {}
        self._order: list[DeviceType] = []
        self._available_devices: list[DeviceInfo] = []
        self.detection_seconds = 0.0
        self.refresh()

    def refresh(self) -> list[DeviceInfo]:
        """Detect devices again (after a driver or environment change).

        Several backends may serve one kind (NVIDIA and ROCm both answer for
        ``cuda``); the first that is available wins."""
        start = time.perf_counter()
        found: list[DeviceInfo] = []
        self._backends, self._order = {}, []
        served: set[DeviceType] = set()
        for backend in self._candidates:
            kind = backend.kind
            if kind not in self._order:
                self._order.append(kind)
            if kind in served:
                continue
            self._backends.setdefault(kind, backend)
            try:
                if not backend.is_available():
                    continue
                self._backends[kind] = backend
                served.add(kind)
                for index in range(backend.device_count()):
                    props = backend.properties(index)
                    found.append(
                        DeviceInfo(
                            device_type=kind,
                            device_id=index if kind.indexed else None,
                            total_memory=props.total_memory,
                            name=props.name,
                            compute_capability=props.compute_capability,
                            arch=props.arch,
                        )
                    )
            except Exception as exc:  # a broken driver must not stop CPU use
                logger.warning("Skipping {} devices: {}", kind.value, exc)
        self._available_devices = found
        self.detection_seconds = time.perf_counter() - start
        return list(found)

    @property
    def devices(self) -> list[DeviceInfo]:
        """Every detected device, in priority order."""
        return list(self._available_devices)

    def backend_for(self, device: DeviceInfo) -> DeviceBackend:
        """The backend that answers for ``device``'s kind."""
        try:
            return self._backends[device.device_type]
        except KeyError:
            raise DeviceError(f"No backend for {device.device_type.value} devices.") from None

    def _describe_available(self) -> str:
        return ", ".join(d.label for d in self._available_devices) or "none"

    def find(self, kind: DeviceType, index: int | None = None) -> list[DeviceInfo]:
        """Detected devices of ``kind`` (and ``index`` when given)."""
        return [
            d
            for d in self._available_devices
            if d.device_type is kind and (index is None or d.index == index)
        ]

    def get_optimal_device(
        self, device_hint: DeviceHint = None, min_memory_gb: float | None = None
    ) -> DeviceInfo:
        """Pick the device for a job.

        Without a hint: the first kind in priority order with a device that
        has ``min_memory_gb`` free (among several CUDA cards, the one with the
        most free memory); the CPU always qualifies as the last resort. With
        a hint: that device, or :class:`DeviceUnavailableError`.
        ``min_memory_gb`` is in GiB (1024^3 bytes).
        """
        parsed = parse_device_hint(device_hint)
        need = int(min_memory_gb * _GIB) if min_memory_gb else 0
        if parsed is None:
            return self._auto(need)
        kind, index = parsed
        candidates = self.find(kind, index)
        if not candidates:
            wanted = f"{kind.value}:{index}" if index is not None else kind.value
            raise DeviceUnavailableError(
                f"Device {wanted} is not available on this machine "
                f"(available: {self._describe_available()}). Use --device auto or one of those."
            )
        best = self._most_free(candidates)
        free = self.free_bytes(best)
        if need and (free is None or free < need):
            have = "an unreadable amount of" if free is None else f"{free / _GIB:.1f} GiB"
            raise DeviceUnavailableError(
                f"Device {best.label} has {have} free memory, less than the {min_memory_gb} GiB required. "
                "Free memory or pick another device."
            )
        return best

    def _auto(self, need: int) -> DeviceInfo:
        for kind in self._order:
            candidates = self.find(kind)
            if not candidates:
                continue
            if kind is DeviceType.CPU:
                return candidates[0]
            best = self._most_free(candidates)
            free = self.free_bytes(best)
            if not need or (free is not None and free >= need):
                return best
            logger.info("{} has too little free memory; trying the next kind", best.label)
        return DeviceInfo(device_type=DeviceType.CPU, name="CPU")

    def _most_free(self, candidates: list[DeviceInfo]) -> DeviceInfo:
        if len(candidates) == 1:
            return candidates[0]

        def key(device: DeviceInfo) -> tuple[bool, int]:
            free = self.free_bytes(device)
            return free is not None, free or 0  # unreadable cards sort last, not as "full" or "free"

        return max(candidates, key=key)

    def free_bytes(self, device: DeviceInfo) -> int | None:
        """Free memory on ``device`` in bytes; None when it cannot be read."""
        info = self.try_memory_info(device)
        return None if info is None else info.free

    def try_memory_info(self, device: DeviceInfo) -> MemoryInfo | None:
        """A full reading, or None when the device cannot be read now."""
        try:
            return self.get_device_memory_info(device)
        except DeviceError as exc:
            logger.debug("{}", exc)
            return None

    def get_device_memory_info(self, device: DeviceInfo) -> MemoryInfo:
        """A full reading (``total``, ``free``, ``allocated``, ``reserved``, bytes)."""
        if not self.find(device.device_type, device.index):
            raise DeviceUnavailableError(
                f"Cannot read memory of {device.label}: it is not available here "
                f"(available: {self._describe_available()})."
            )
        backend = self.backend_for(device)
        try:
            return backend.memory_info(device.index)
        except Exception as exc:
            raise DeviceError(f"Reading memory of {device.label} failed: {exc}") from exc

    def counters(self, device: DeviceInfo) -> AllocatorCounters:
        """This process's allocator counters on ``device`` (no device sync)."""
        return self.backend_for(device).counters(device.index)

    def peak_is_costly(self, device: DeviceInfo) -> bool:
        """True where starting a peak window costs real time (see the backends)."""
        return bool(getattr(self.backend_for(device), "costly_peak", False))

    def reset_peak(self, device: DeviceInfo) -> None:
        """Start a new peak-memory window on ``device``."""
        self.backend_for(device).reset_peak(device.index)

    def clear_cache(self, device: DeviceInfo) -> None:
        """Release cached memory on ``device``; a no-op where there is none."""
        if not self.find(device.device_type, device.index):
            logger.debug("clear_cache({}): device not present, nothing to do", device.label)
            return
        self.backend_for(device).clear_cache(device.index)

    def supports_bf16(self, device: DeviceInfo) -> bool:
        """True when bfloat16 is fast and safe on ``device``."""
        return self.backend_for(device).supports_bf16(device.index)

    def compute_dtype(self, device: DeviceInfo) -> str:
        """The dtype models should run in on ``device`` (``bfloat16``, ``float16``, ``float32``)."""
        return self.backend_for(device).compute_dtype(device.index)

    def processes(self, device: DeviceInfo) -> list[ProcessMemory] | None:
        """Processes holding memory on ``device``, largest first; None if unknown."""
        try:
            return self.backend_for(device).processes(device.index)
        except Exception as exc:
            logger.debug("process list of {} failed: {}", device.label, exc)
            return None

    def busy_elsewhere(self, device: DeviceInfo) -> float | None:
        """How much of ``device``'s compute other processes use (the CPU:
        cores' worth, over the time since the previous reading or since the
        manager started; this thread waits only where that is under 0.1 s);
        None if unknown."""
        try:
            return self.backend_for(device).busy_elsewhere(device.index)
        except Exception as exc:
            logger.debug("load reading of {} failed: {}", device.label, exc)
            return None

    def cpu(self) -> DeviceInfo:
        """The CPU device record."""
        found = self.find(DeviceType.CPU)
        return found[0] if found else DeviceInfo(device_type=DeviceType.CPU, name="CPU")


def default_device_manager() -> DeviceManager:
    """The process-wide manager over the registered backends, detected on
    first use (and again after a backend is registered). Only a
    :class:`~ragged.gpu.runtime.Runtime` built without one, and the command
    line, ask for it; everything else is handed its manager."""
    return _detected(registry.generation())


@lru_cache(maxsize=1)
def _detected(generation: int) -> DeviceManager:
    return DeviceManager()
