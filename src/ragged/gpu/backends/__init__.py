"""Device backends and the one list that fixes detection order."""

from __future__ import annotations

from ragged.gpu.backends.base import DeviceBackend, DeviceProperties
from ragged.gpu.backends.cpu import CPUBackend
from ragged.gpu.backends.cuda import CUDABackend
from ragged.gpu.backends.mps import MPSBackend


def default_backends() -> list[DeviceBackend]:
    """Backends in auto-selection priority: CUDA, then MPS, then CPU."""
    return [CUDABackend(), MPSBackend(), CPUBackend()]


__all__ = [
    "CPUBackend",
    "CUDABackend",
    "DeviceBackend",
    "DeviceProperties",
    "MPSBackend",
    "default_backends",
]
