"""Intel GPU backend: ``torch.xpu`` (torch 2.4 and newer)."""

from __future__ import annotations

import torch

from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory


def _xpu() -> object | None:
    return getattr(torch, "xpu", None)


class XPUBackend:
    """Answers device questions for Intel GPUs (Arc, Data Center GPU Max)."""

    kind = DeviceType.XPU
    costly_peak = False

    def is_available(self) -> bool:
        xpu = _xpu()
        return bool(xpu is not None and xpu.is_available())  # type: ignore[attr-defined]

    def device_count(self) -> int:
        return int(torch.xpu.device_count()) if self.is_available() else 0

    def properties(self, index: int) -> DeviceProperties:
        props = torch.xpu.get_device_properties(index)
        return DeviceProperties(name=str(props.name), total_memory=int(props.total_memory),
                                arch=str(getattr(props, "device_id", "")) or None)

    def memory_info(self, index: int) -> MemoryInfo:
        free, total = torch.xpu.mem_get_info(index)
        return MemoryInfo(total=int(total), free=int(free), allocated=int(torch.xpu.memory_allocated(index)),
                          reserved=int(torch.xpu.memory_reserved(index)))

    def counters(self, index: int) -> AllocatorCounters:
        return AllocatorCounters(
            allocated=int(torch.xpu.memory_allocated(index)),
            reserved=int(torch.xpu.memory_reserved(index)),
            peak_allocated=int(torch.xpu.max_memory_allocated(index)),
        )

    def reset_peak(self, index: int) -> None:
        torch.xpu.reset_peak_memory_stats(index)

    def clear_cache(self, index: int) -> None:
        torch.xpu.empty_cache()

    def supports_bf16(self, index: int) -> bool:
        return True  # every torch-supported Intel GPU has bf16 matrix units (XMX)

    def compute_dtype(self, index: int) -> str:
        return "bfloat16"

    def processes(self, index: int) -> list[ProcessMemory] | None:
        return None

    def busy_elsewhere(self, index: int) -> float | None:
        return None  # not read on accelerators: their first batch comes from the memory plan
