"""Typed records shared by the device backends and the managers."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum

import torch


class DeviceType(StrEnum):
    """Kinds of compute device, in no particular order."""

    CUDA = "cuda"
    MPS = "mps"
    CPU = "cpu"


@dataclass(frozen=True)
class DeviceInfo:
    """One compute device; memory figures are in bytes."""

    device_type: DeviceType
    device_id: int | None = None
    total_memory: int = 0  # bytes
    name: str = ""
    compute_capability: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "device_type", DeviceType(self.device_type))
        if self.device_type is DeviceType.CUDA and self.device_id is None:
            object.__setattr__(self, "device_id", 0)

    @property
    def index(self) -> int:
        """The device's ordinal within its kind (0 for CPU and MPS)."""
        return self.device_id or 0

    @property
    def label(self) -> str:
        """The torch spelling: ``cuda:1``, ``mps`` or ``cpu``."""
        if self.device_type is DeviceType.CUDA:
            return f"cuda:{self.index}"
        return self.device_type.value

    @property
    def torch_device(self) -> torch.device:
        """This device as a :class:`torch.device`."""
        return torch.device(self.label)

    @property
    def is_accelerator(self) -> bool:
        """True for CUDA and MPS."""
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
    as attributes and as a mapping (``info["free"]``).
    """

    total: int  # bytes
    free: int  # bytes
    allocated: int  # bytes
    reserved: int  # bytes

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
    """Host-side allocator counters: cheap to read, no device sync (bytes)."""

    allocated: int  # bytes
    reserved: int  # bytes
    peak_allocated: int | None  # bytes since the last reset; None if unknown
