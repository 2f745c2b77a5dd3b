"""CPU backend: system RAM through psutil, peak RSS through /proc, the heap through glibc."""

from __future__ import annotations

import gc
import os
import platform
from pathlib import Path

import psutil

from ragged.gpu.backends import host_heap, host_load
from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory

_PROC_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _read_hwm_bytes() -> int | None:
    """Peak resident set size (VmHWM) of this process, or None off Linux."""
    try:
        with _PROC_STATUS.open("rb") as fh:
            for line in fh:
                if line.startswith(b"VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB -> bytes
    except OSError:
        return None
    return None


class CPUBackend:
    """Answers device questions for the host CPU and its RAM.

    ``allocated`` is this process's resident set. The peak window uses
    Linux's resettable high-water mark (writing ``5`` to
    ``/proc/self/clear_refs``). Memory freed by earlier batches stays
    resident in malloc's heap, where a new batch reuses it without raising
    the high-water mark; so a new window first hands free heap pages back
    (``malloc_trim``, about 1 ms), and the mark then sees what the batch
    really touches. Where either is missing the peak is unknown (None).

    Between windows the heap keeps what batches free for the next one, as a
    GPU's caching allocator does (:mod:`~ragged.gpu.backends.host_heap`:
    without that, a batch larger than the one before paid 20-30% in page
    faults); :meth:`clear_cache` hands it back.
    """

    kind = DeviceType.CPU
    costly_peak = True

    def __init__(self) -> None:
        self._process = psutil.Process(os.getpid())
        self._can_reset_hwm: bool | None = None
        host_heap.keep_freed_memory(int(psutil.virtual_memory().total))  # once per process
        self._load = host_load.LoadMeter()  # its window starts now: the first reading spans the model load

    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return 1

    def properties(self, index: int) -> DeviceProperties:
        name = platform.processor() or platform.machine() or "CPU"
        cores = psutil.cpu_count(logical=True) or 1
        return DeviceProperties(
            name=f"{name} ({cores} threads)",
            total_memory=int(psutil.virtual_memory().total),
        )

    def memory_info(self, index: int) -> MemoryInfo:
        vm = psutil.virtual_memory()
        rss = int(self._process.memory_info().rss)
        return MemoryInfo(total=int(vm.total), free=int(vm.available), allocated=rss, reserved=rss)

    def counters(self, index: int) -> AllocatorCounters:
        rss = int(self._process.memory_info().rss)
        peak = _read_hwm_bytes() if self._can_reset_hwm else None
        return AllocatorCounters(allocated=rss, reserved=rss, peak_allocated=peak)

    def reset_peak(self, index: int) -> None:
        if self._can_reset_hwm is False:
            return
        host_heap.trim()
        try:
            _CLEAR_REFS.write_text("5")
            self._can_reset_hwm = True
        except OSError:
            self._can_reset_hwm = False

    def clear_cache(self, index: int) -> None:
        gc.collect()
        host_heap.trim()

    def busy_elsewhere(self, index: int) -> float | None:
        return self._load.read()

    def supports_bf16(self, index: int) -> bool:
        return False

    def compute_dtype(self, index: int) -> str:
        return "float32"  # bf16 matmuls run at a fifth of f32's speed on CPUs without AMX

    def processes(self, index: int) -> list[ProcessMemory] | None:
        """The largest processes by resident memory (RAM is shared by all)."""
        found: list[ProcessMemory] = []
        for proc in psutil.process_iter(["pid", "name", "memory_info"]):
            info = proc.info
            if info.get("memory_info") is not None:
                found.append(ProcessMemory(int(info["pid"]), str(info.get("name") or "?"),
                                           int(info["memory_info"].rss)))
        return sorted(found, key=lambda p: -p.used_bytes)[:5]
