"""Apple Silicon backend: real readings from ``torch.mps``.

``total`` is Metal's recommended working-set size; ``reserved`` is what the
driver holds for this process (tensors, cache and graphs); ``free`` is the
smaller of the working set left and the RAM the OS still has, since the GPU
shares it.
"""

from __future__ import annotations

import platform

import psutil
import torch

from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory


def _macos_major() -> int:
    release = platform.mac_ver()[0]
    try:
        return int(release.split(".")[0])
    except ValueError:
        return 0


class MPSBackend:
    """Answers device questions for the Apple GPU through Metal (MPS)."""

    kind = DeviceType.MPS
    costly_peak = False

    def is_available(self) -> bool:
        return bool(torch.backends.mps.is_available())

    def device_count(self) -> int:
        return 1 if self.is_available() else 0

    def properties(self, index: int) -> DeviceProperties:
        chip = platform.processor() or platform.machine() or "Apple"
        return DeviceProperties(
            name=f"Apple GPU ({chip}, MPS)",
            total_memory=int(torch.mps.recommended_max_memory()),
        )

    def memory_info(self, index: int) -> MemoryInfo:
        total = int(torch.mps.recommended_max_memory())
        driver = int(torch.mps.driver_allocated_memory())
        current = int(torch.mps.current_allocated_memory())
        free = max(0, min(total - driver, int(psutil.virtual_memory().available)))
        return MemoryInfo(total=total, free=free, allocated=current, reserved=driver)

    def counters(self, index: int) -> AllocatorCounters:
        # MPS has no peak counter; the driver keeps freed blocks cached, so its
        # allocation after a batch bounds the batch's peak from above.
        return AllocatorCounters(
            allocated=int(torch.mps.current_allocated_memory()),
            reserved=int(torch.mps.driver_allocated_memory()),
            peak_allocated=None,
        )

    def reset_peak(self, index: int) -> None:
        return None

    def clear_cache(self, index: int) -> None:
        torch.mps.empty_cache()

    def supports_bf16(self, index: int) -> bool:
        # bf16 kernels on MPS need macOS 14 (colpali-engine issue 197).
        return _macos_major() >= 14

    def compute_dtype(self, index: int) -> str:
        return "bfloat16" if self.supports_bf16(index) else "float32"  # fp16 on MPS loses ColPali's accuracy

    def processes(self, index: int) -> list[ProcessMemory] | None:
        return None  # Metal reports no per-process figures

    def busy_elsewhere(self, index: int) -> float | None:
        return None  # not read on accelerators: their first batch comes from the memory plan
