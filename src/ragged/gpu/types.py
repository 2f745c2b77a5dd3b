"""Typed records shared by the device backends and the managers.

Nothing here imports torch at module level: ``ragged --help`` and
``ragged gpu list`` must start fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


class DeviceType(StrEnum):
    """Kinds of compute device; the value is torch's device type.

    Adding a kind is one enum member plus one backend file registered in
    :func:`ragged.gpu.backends.default_backends`.
    """

    CUDA = "cuda"  # NVIDIA, and AMD through ROCm builds of torch
    XPU = "xpu"  # Intel GPUs
    MPS = "mps"
    CPU = "cpu"

    @property
    def indexed(self) -> bool:
        """True for kinds that may have several devices (``cuda:1``)."""
        return self in (DeviceType.CUDA, DeviceType.XPU)


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device; memory figures are in bytes.

    ``arch`` is the backend's own label for the chip generation (NVIDIA's
    compute capability such as ``8.0``, AMD's ``gfx90a``), for display.
    """

    device_type: DeviceType
    device_id: int | None = None
    total_memory: int = 0  # bytes
    name: str = ""
    compute_capability: tuple[int, int] | None = None
    arch: str | None = None

    def __post_init__(self) -> None:
        kind = DeviceType(self.device_type)
        object.__setattr__(self, "device_type", kind)
        if kind.indexed and self.device_id is None:
            object.__setattr__(self, "device_id", 0)
        if self.arch is None and self.compute_capability is not None:
            object.__setattr__(self, "arch", ".".join(map(str, self.compute_capability)))

    @property
    def index(self) -> int:
        """The device's ordinal within its kind (0 for CPU and MPS)."""
        return self.device_id or 0

    @property
    def label(self) -> str:
        """The torch spelling: ``cuda:1``, ``mps`` or ``cpu``."""
        if self.device_type.indexed:
            return f"{self.device_type.value}:{self.index}"
        return self.device_type.value

    @property
    def torch_device(self) -> torch.device:
        """This device as a :class:`torch.device`."""
        import torch

        return torch.device(self.label)

    @property
    def is_accelerator(self) -> bool:
        """True for every kind but the CPU."""
        return self.device_type is not DeviceType.CPU

    def same_device(self, other: DeviceInfo) -> bool:
        """True when both records name the same physical slot."""
        return self.device_type is other.device_type and self.index == other.index

    def __str__(self) -> str:
        return f"{self.label} ({self.name})" if self.name else self.label


class MemoryUsage:
    """Derived figures for records that carry ``total`` and ``free`` bytes."""

    total: int
    free: int

    @property
    def used(self) -> int:
        """Bytes in use by every process (``total - free``)."""
        return max(0, self.total - self.free)

    @property
    def utilisation_pct(self) -> float:
        """Share of ``total`` in use, in percent."""
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class MemoryInfo(MemoryUsage, Mapping[str, int]):
    """Memory of one device at one moment, all in bytes.

    ``free`` is what the driver (or the OS, for the CPU) can still hand out,
    counting other processes. ``allocated`` is held by live tensors of this
    process, ``reserved`` by this process's caching allocator. Readable both
    as attributes and as a mapping (``info["free"]``). A reading that could
    not be taken is not a ``MemoryInfo`` of zeros: callers get ``None``.
    """

    total: int  # bytes
    free: int  # bytes
    allocated: int  # bytes
    reserved: int  # bytes

    @property
    def reusable(self) -> int:
        """Bytes our own caching allocator holds but no tensor uses."""
        return max(0, self.reserved - self.allocated)

    @property
    def available(self) -> int:
        """Free memory plus our allocator's unused cache: what a batch can get."""
        return min(self.total, self.free + self.reusable)

    def __getitem__(self, key: str) -> int:
        if key not in self._keys():
            raise KeyError(key)
        return int(getattr(self, key))

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())

    @staticmethod
    def _keys() -> tuple[str, ...]:
        return tuple(f.name for f in fields(MemoryInfo))


@dataclass(frozen=True)
class AllocatorCounters:
    """Host-side allocator counters: cheap to read, no device sync (bytes).

    ``peak_allocated`` is None when the backend has no peak window, so the
    peak is unknown rather than zero.
    """

    allocated: int  # bytes
    reserved: int  # bytes
    peak_allocated: int | None  # bytes since the last reset; None if unknown


@dataclass(frozen=True)
class ProcessMemory:
    """Memory one process holds on a device (bytes)."""

    pid: int
    name: str
    used_bytes: int
