"""Typed records shared by the device backends and the managers.

Nothing here imports torch at module level: ``ragged --help`` and
``ragged gpu list`` must start fast.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import torch


class _Kinds(type):
    """Iteration and membership over the registered kinds (``for kind in DeviceType``)."""

    def __iter__(cls) -> Iterator[DeviceType]:
        return iter(list(DeviceType._members.values()))

    def __len__(cls) -> int:
        return len(DeviceType._members)

    def __contains__(cls, item: object) -> bool:
        return isinstance(item, str) and str.__str__(item) in DeviceType._members


class DeviceType(str, metaclass=_Kinds):
    """A kind of compute device; its text is torch's device type (``cuda``).

    An open enumeration: the spec's members (``CUDA``, ``MPS``, ``CPU``, and
    ``XPU``) are built in, and a new kind is added by registering its backend
    (:func:`ragged.gpu.registry.register_backend`), never by editing this
    class. ``DeviceType("npu")`` gives the registered member (the same object
    each time, so ``is`` comparisons hold) or raises :class:`ValueError`.
    """

    __slots__ = ()
    _members: ClassVar[dict[str, DeviceType]] = {}
    _indexed: ClassVar[set[str]] = set()

    CUDA: ClassVar[DeviceType]  # NVIDIA, and AMD through ROCm builds of torch
    XPU: ClassVar[DeviceType]  # Intel GPUs
    MPS: ClassVar[DeviceType]
    CPU: ClassVar[DeviceType]

    def __new__(cls, value: str) -> DeviceType:
        if isinstance(value, DeviceType):
            return value
        try:
            return cls._members[str(value)]
        except KeyError:
            raise ValueError(f"{value!r} is not a registered device kind") from None

    @classmethod
    def register(cls, name: str, *, indexed: bool) -> DeviceType:
        """The member for ``name``, added if new (``indexed``: several devices, ``npu:1``)."""
        if not name or not name.isidentifier() or name != name.lower() or name == "auto":
            raise ValueError(f"A device kind is a lower-case name such as 'npu', not {name!r}.")
        member = cls._members.get(name)
        if member is None:
            member = str.__new__(cls, name)
            cls._members[name] = member
        if indexed:
            cls._indexed.add(name)
        else:
            cls._indexed.discard(name)
        return member

    @property
    def value(self) -> str:
        """The kind as plain text (as an enum member's value)."""
        return str.__str__(self)

    @property
    def indexed(self) -> bool:
        """True for kinds that may have several devices (``cuda:1``)."""
        return self.value in DeviceType._indexed

    def __str__(self) -> str:
        return self.value

    def __repr__(self) -> str:
        return f"DeviceType.{self.value.upper()}"

    def __reduce__(self) -> tuple[type[DeviceType], tuple[str]]:
        return DeviceType, (self.value,)


DeviceType.CUDA = DeviceType.register("cuda", indexed=True)
DeviceType.XPU = DeviceType.register("xpu", indexed=True)
DeviceType.MPS = DeviceType.register("mps", indexed=False)
DeviceType.CPU = DeviceType.register("cpu", indexed=False)


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
