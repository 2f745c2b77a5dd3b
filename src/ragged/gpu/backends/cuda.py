"""NVIDIA backend: torch's allocator counters plus NVML for driver readings.

Driver-level free memory (which counts other processes) comes from NVML when
``nvidia-ml-py`` is installed, so querying a card never creates a CUDA
context on it. Without NVML, ``torch.cuda.mem_get_info`` is used, which does
create one on the card it reads. ROCm builds of torch also answer to
``torch.cuda``; they are served by :mod:`ragged.gpu.backends.rocm`.
"""

from __future__ import annotations

from typing import Any

import torch
from loguru import logger

from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory


class _NVML:
    """Lazy NVML session; handles looked up by UUID so that
    ``CUDA_VISIBLE_DEVICES`` reordering is honoured."""

    def __init__(self) -> None:
        self._module: Any = None
        self._ready: bool | None = None
        self._handles: dict[str, Any] = {}

    def ready(self) -> bool:
        if self._ready is None:
            try:
                import pynvml

                pynvml.nvmlInit()
                self._module = pynvml
                self._ready = True
            except Exception as exc:  # ImportError or NVMLError_LibraryNotFound
                logger.debug("NVML not usable ({}); falling back to torch", type(exc).__name__)
                self._ready = False
        return self._ready

    def _handle(self, uuid: str) -> Any:
        handle = self._handles.get(uuid)
        if handle is None:
            handle = self._module.nvmlDeviceGetHandleByUUID(uuid)
            self._handles[uuid] = handle
        return handle

    def memory(self, uuid: str) -> tuple[int, int] | None:
        """(free, total) in bytes for the card with this UUID, or None."""
        if not self.ready():
            return None
        try:
            info = self._module.nvmlDeviceGetMemoryInfo(self._handle(uuid))
            return int(info.free), int(info.total)
        except Exception as exc:  # NVMLError: MIG slices, unknown UUID, ...
            logger.debug("NVML reading failed for {}: {}", uuid, type(exc).__name__)
            return None

    def processes(self, uuid: str) -> list[ProcessMemory] | None:
        """Compute processes on the card and the memory each holds, or None."""
        if not self.ready():
            return None
        try:
            running = self._module.nvmlDeviceGetComputeRunningProcesses(self._handle(uuid))
        except Exception as exc:
            logger.debug("NVML process list failed for {}: {}", uuid, type(exc).__name__)
            return None
        found = []
        for proc in running:
            pid = int(proc.pid)
            used = getattr(proc, "usedGpuMemory", None)
            found.append(ProcessMemory(pid, _process_name(pid), int(used) if used else 0))
        return sorted(found, key=lambda p: -p.used_bytes)


def _process_name(pid: int) -> str:
    try:
        import psutil

        return str(psutil.Process(pid).name())
    except Exception:  # gone, or another user's process
        return "?"


class TorchCudaAllocator:
    """torch's caching allocator behind ``torch.cuda``: the same for NVIDIA
    and ROCm builds (HIP answers to ``torch.cuda``)."""

    def counters(self, index: int) -> AllocatorCounters:
        return AllocatorCounters(
            allocated=int(torch.cuda.memory_allocated(index)),
            reserved=int(torch.cuda.memory_reserved(index)),
            peak_allocated=int(torch.cuda.max_memory_allocated(index)),
        )

    def reset_peak(self, index: int) -> None:
        torch.cuda.reset_peak_memory_stats(index)

    def clear_cache(self, index: int) -> None:
        with torch.cuda.device(index):
            torch.cuda.empty_cache()

    def busy_elsewhere(self, index: int) -> float | None:
        return None  # not read on accelerators: their first batch comes from the memory plan


class CUDABackend(TorchCudaAllocator):
    """Answers device questions for NVIDIA GPUs through torch and NVML."""

    kind = DeviceType.CUDA
    costly_peak = False

    def __init__(self) -> None:
        self._nvml = _NVML()
        self._uuids: dict[int, str] = {}

    def is_available(self) -> bool:
        return torch.version.hip is None and bool(torch.cuda.is_available())

    def device_count(self) -> int:
        return int(torch.cuda.device_count()) if self.is_available() else 0

    def properties(self, index: int) -> DeviceProperties:
        props = torch.cuda.get_device_properties(index)  # cached by torch: cheap to call again
        return DeviceProperties(
            name=str(props.name),
            total_memory=int(props.total_memory),
            compute_capability=(int(props.major), int(props.minor)),
            arch=f"{props.major}.{props.minor}",
        )

    def _uuid(self, index: int) -> str | None:
        if index not in self._uuids:
            uuid = getattr(torch.cuda.get_device_properties(index), "uuid", None)
            if uuid is None:
                return None
            text = str(uuid)
            self._uuids[index] = text if text.startswith(("GPU-", "MIG-")) else f"GPU-{text}"
        return self._uuids[index]

    def memory_info(self, index: int) -> MemoryInfo:
        uuid = self._uuid(index)
        reading = self._nvml.memory(uuid) if uuid else None
        if reading is None:
            free, total = torch.cuda.mem_get_info(index)
        else:
            # NVML's total counts memory the driver keeps for itself; CUDA's
            # (the device properties) is what can be allocated, so use that.
            total = self.properties(index).total_memory
            free = min(reading[0], total)
        reserved = int(torch.cuda.memory_reserved(index))
        cap = self._process_cap(index, int(total))
        if cap is not None:  # set_per_process_memory_fraction: the allocator's real limit
            total, free = cap, min(int(free), max(0, cap - reserved))
        return MemoryInfo(
            total=int(total),
            free=int(free),
            allocated=int(torch.cuda.memory_allocated(index)),
            reserved=reserved,
        )

    @staticmethod
    def _process_cap(index: int, total: int) -> int | None:
        """Bytes this process may hold if a memory fraction was set, else None."""
        if not torch.cuda.is_initialized():  # type: ignore[no-untyped-call]
            return None  # setting a fraction initialises CUDA, so none was set
        try:
            fraction = float(torch.cuda.get_per_process_memory_fraction(index))
        except (AttributeError, RuntimeError):
            return None
        return int(total * fraction) if fraction < 1.0 else None

    def supports_bf16(self, index: int) -> bool:
        major, _ = self.properties(index).compute_capability or (0, 0)
        return major >= 8  # Ampere and newer

    def compute_dtype(self, index: int) -> str:
        return "bfloat16" if self.supports_bf16(index) else "float16"

    def processes(self, index: int) -> list[ProcessMemory] | None:
        uuid = self._uuid(index)
        return self._nvml.processes(uuid) if uuid else None
