"""Device backends: one file per kind, registered in :mod:`ragged.gpu.registry`.

A new kind of device is one backend file (here or in any package) plus one
:func:`~ragged.gpu.registry.register_backend` call; nothing above the seam
changes. The detection order is the registry's priority order.
"""

from __future__ import annotations

from ragged.gpu.backends.base import DeviceBackend, DeviceProperties
from ragged.gpu.backends.cpu import CPUBackend
from ragged.gpu.backends.cuda import CUDABackend
from ragged.gpu.backends.mps import MPSBackend
from ragged.gpu.backends.rocm import ROCmBackend
from ragged.gpu.backends.xpu import XPUBackend
from ragged.gpu.registry import build_backends


def default_backends() -> list[DeviceBackend]:
    """Every registered backend, in auto-selection priority (by default CUDA
    on NVIDIA, CUDA on ROCm, XPU, MPS, CPU).

    NVIDIA and ROCm both answer for ``cuda`` devices; a torch build is one or
    the other, and only the matching backend reports itself available.
    """
    return build_backends()


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
