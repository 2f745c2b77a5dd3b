"""The seam every hardware question goes through.

One backend per device kind answers the same small set of questions. The
managers never call ``torch.cuda`` or ``torch.mps`` directly, so tests swap
in a fake backend that reports any memory figure and runs out of memory on
cue. A backend owns what is particular to its kind: how its chips are named
(``arch``), when bfloat16 is safe, which dtype embeds best, and what it can
tell about other processes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory


@dataclass(frozen=True)
class DeviceProperties:
    """Static facts about one device."""

    name: str
    total_memory: int  # bytes
    compute_capability: tuple[int, int] | None = None
    arch: str | None = None  # the backend's label for the chip generation


@runtime_checkable
class DeviceBackend(Protocol):
    """What ragged needs to know about one kind of device."""

    kind: DeviceType

    def is_available(self) -> bool:
        """True when this kind of device can be used in this process."""
        ...

    def device_count(self) -> int:
        """Number of visible devices of this kind."""
        ...

    def properties(self, index: int) -> DeviceProperties:
        """Name, total memory and chip generation of device ``index``."""
        ...

    def memory_info(self, index: int) -> MemoryInfo:
        """A full memory reading, counting other processes where possible."""
        ...

    def counters(self, index: int) -> AllocatorCounters:
        """This process's allocator counters (hot-path safe, no sync)."""
        ...

    def reset_peak(self, index: int) -> None:
        """Start a new peak-memory window."""
        ...

    # True where a peak window costs real time (the CPU hands freed heap back
    # first, and the next batch faults it in again): peaks are then measured
    # on a sample of batches, not on every one.
    costly_peak: bool

    def clear_cache(self, index: int) -> None:
        """Return cached, unused blocks to the driver (may sync)."""
        ...

    def supports_bf16(self, index: int) -> bool:
        """True when bfloat16 compute is fast and safe on this device."""
        ...

    def compute_dtype(self, index: int) -> str:
        """The dtype models should run in here: ``bfloat16``, ``float16`` or ``float32``."""
        ...

    def processes(self, index: int) -> list[ProcessMemory] | None:
        """Processes holding memory on the device; None when it cannot be known."""
        ...

    def busy_elsewhere(self, index: int) -> float | None:
        """How much of the device's compute other processes use (on the CPU:
        cores' worth, since the previous reading or the backend's start, at
        least 0.1 s); None where unknown."""
        ...
