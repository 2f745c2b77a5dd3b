"""AMD backend: ROCm builds of torch, which answer to ``torch.cuda``.

Devices keep torch's ``cuda:N`` names. What differs from NVIDIA lives here:
chips are named by their gfx target (``gfx90a``, ``gfx942``), not by a
compute capability; bfloat16 is fast from CDNA2 (MI200) and RDNA3 on; free
memory comes from the HIP runtime (there is no NVML).
"""

from __future__ import annotations

import torch

from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.backends.cuda import TorchCudaAllocator
from ragged.gpu.types import DeviceType, MemoryInfo, ProcessMemory

# gfx targets with fast bf16 matrix units: CDNA2/3/4 (MI200, MI300, MI350) and RDNA3/4.
_BF16_PREFIXES = ("gfx90a", "gfx94", "gfx95", "gfx11", "gfx12")


def gfx_target(arch_name: str) -> str:
    """The bare gfx target of a ``gcnArchName`` such as ``gfx90a:sramecc+:xnack-``."""
    return arch_name.split(":", 1)[0].strip()


class ROCmBackend(TorchCudaAllocator):
    """Answers device questions for AMD GPUs through a ROCm build of torch."""

    kind = DeviceType.CUDA
    costly_peak = False

    def is_available(self) -> bool:
        return torch.version.hip is not None and bool(torch.cuda.is_available())

    def device_count(self) -> int:
        return int(torch.cuda.device_count()) if self.is_available() else 0

    def properties(self, index: int) -> DeviceProperties:
        props = torch.cuda.get_device_properties(index)
        return DeviceProperties(
            name=str(props.name),
            total_memory=int(props.total_memory),
            arch=gfx_target(str(getattr(props, "gcnArchName", "gfx"))),
        )

    def memory_info(self, index: int) -> MemoryInfo:
        free, total = torch.cuda.mem_get_info(index)
        return MemoryInfo(
            total=int(total),
            free=int(free),
            allocated=int(torch.cuda.memory_allocated(index)),
            reserved=int(torch.cuda.memory_reserved(index)),
        )

    def supports_bf16(self, index: int) -> bool:
        arch = self.properties(index).arch or ""
        return arch.startswith(_BF16_PREFIXES)

    def compute_dtype(self, index: int) -> str:
        return "bfloat16" if self.supports_bf16(index) else "float16"

    def processes(self, index: int) -> list[ProcessMemory] | None:
        return None  # no portable per-process reading without amdsmi
