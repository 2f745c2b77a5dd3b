"""Device backends and the one list that fixes detection order.

A new kind of device is one backend file here plus its line in
:func:`default_backends` (and a :class:`~ragged.gpu.types.DeviceType`
member); nothing above the seam changes.
"""

from __future__ import annotations

from ragged.gpu.backends.base import DeviceBackend, DeviceProperties
from ragged.gpu.backends.cpu import CPUBackend
from ragged.gpu.backends.cuda import CUDABackend
from ragged.gpu.backends.mps import MPSBackend
from ragged.gpu.backends.rocm import ROCmBackend
from ragged.gpu.backends.xpu import XPUBackend


def default_backends() -> list[DeviceBackend]:
    """Backends in auto-selection priority: CUDA (NVIDIA or ROCm), XPU, MPS, CPU.

    NVIDIA and ROCm both answer for ``cuda`` devices; a torch build is one or
    the other, and only the matching backend reports itself available.
    """
    return [CUDABackend(), ROCmBackend(), XPUBackend(), MPSBackend(), CPUBackend()]


__all__ = [
    "CPUBackend",
    "CUDABackend",
    "DeviceBackend",
    "DeviceProperties",
    "MPSBackend",
    "ROCmBackend",
    "XPUBackend",
    "default_backends",
]
