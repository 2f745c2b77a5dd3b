"""Test doubles behind the backend seam: cards with any memory figure that
run out of memory on cue, raising torch's real OOM types and messages."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ragged.gpu.backends.base import DeviceProperties
from ragged.gpu.types import AllocatorCounters, DeviceType, MemoryInfo, ProcessMemory

GiB = 1024**3
MiB = 1024**2


@dataclass
class FakeCard:
    """One simulated device; all figures in bytes."""

    name: str = "Fake GPU"
    total: int = 8 * GiB
    others: int = 0  # held by other processes
    allocated: int = 0  # live tensors of this process
    reserved: int = 0  # held by this process's caching allocator
    peak: int = 0
    compute_capability: tuple[int, int] | None = (8, 0)
    clear_calls: int = 0

    @property
    def free(self) -> int:
        return max(0, self.total - self.others - self.reserved)


def oom_message(kind: DeviceType, nbytes: int) -> str:
    """The allocator's own wording for each kind."""
    gib = nbytes / GiB
    if kind is DeviceType.MPS:
        return f"MPS backend out of memory (MPS allocated: 1.00 GB, other allocations: 0 bytes, max allowed: 8.00 GB). Tried to allocate {gib:.2f} GB on private pool."  # noqa: E501
    if kind is DeviceType.CPU:
        return f"[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: can't allocate memory: you tried to allocate {nbytes} bytes. Error code 12 (Cannot allocate memory)"  # noqa: E501
    return (
        f"CUDA out of memory. Tried to allocate {gib:.2f} GiB. GPU 0 has a total capacity of 8.00 GiB "
        "of which 0 bytes is free. Of the allocated memory 7.00 GiB is allocated by PyTorch."
    )


@dataclass
class FakeBackend:
    """A backend of any kind over :class:`FakeCard` records."""

    kind: DeviceType = DeviceType.CUDA
    cards: list[FakeCard] = field(default_factory=lambda: [FakeCard()])
    available: bool = True
    bf16: bool = True
    on_clear: Callable[[int], None] | None = None
    readable: bool = True  # False: memory readings fail, as a broken driver's would
    costly_peak: bool = False  # True: peaks are measured on a sample of batches, as on the real CPU
    elsewhere: float | None = None  # what busy_elsewhere reports (cores' worth other processes use)

    def is_available(self) -> bool:
        return self.available

    def device_count(self) -> int:
        return len(self.cards) if self.available else 0

    def properties(self, index: int) -> DeviceProperties:
        card = self.cards[index]
        return DeviceProperties(card.name, card.total, card.compute_capability)

    def memory_info(self, index: int) -> MemoryInfo:
        if not self.readable:
            raise RuntimeError("NVML: GPU is lost")
        card = self.cards[index]
        return MemoryInfo(total=card.total, free=card.free, allocated=card.allocated, reserved=card.reserved)

    def counters(self, index: int) -> AllocatorCounters:
        card = self.cards[index]
        return AllocatorCounters(card.allocated, card.reserved, card.peak)

    def reset_peak(self, index: int) -> None:
        self.cards[index].peak = self.cards[index].allocated

    def clear_cache(self, index: int) -> None:
        card = self.cards[index]
        card.clear_calls += 1
        card.reserved = card.allocated
        if self.on_clear is not None:
            self.on_clear(index)

    def supports_bf16(self, index: int) -> bool:
        return self.bf16

    def compute_dtype(self, index: int) -> str:
        if self.kind is DeviceType.CPU:
            return "float32"
        return "bfloat16" if self.bf16 else "float16"

    def processes(self, index: int) -> list[ProcessMemory] | None:
        card = self.cards[index]
        return [ProcessMemory(4242, "other-job", card.others)] if card.others else []

    def busy_elsewhere(self, index: int) -> float | None:
        return self.elsewhere

    # -- simulated allocations ----------------------------------------------

    def allocate(self, index: int, nbytes: int) -> None:
        """Take ``nbytes``; raise the real OOM type when they do not fit."""
        card = self.cards[index]
        spare = card.reserved - card.allocated
        need = max(0, nbytes - spare)
        if need > card.free:
            message = oom_message(self.kind, nbytes)
            if self.kind is DeviceType.CUDA:
                raise torch.OutOfMemoryError(message)
            raise RuntimeError(message)
        card.reserved += need
        card.allocated += nbytes
        card.peak = max(card.peak, card.allocated)

    def release(self, index: int, nbytes: int) -> None:
        """Give back ``nbytes`` to the cache (reserved stays, like torch)."""
        self.cards[index].allocated -= nbytes


def fake_cpu(total: int = 16 * GiB, others: int = 2 * GiB) -> FakeBackend:
    """A CPU backend with chosen RAM figures."""
    return FakeBackend(
        kind=DeviceType.CPU, cards=[FakeCard(name="Fake CPU", total=total, others=others, compute_capability=None)],
        bf16=False,
    )


class FakeClock:
    """A ``time.perf_counter`` stand-in that only moves when told to."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Workload:
    """A batch function that needs ``base + per_item x n`` bytes on a fake card.

    With a ``clock``, each batch takes ``seconds_per_batch + seconds_per_item
    x n`` of fake time, so larger batches are faster per item, without sleeping."""

    backend: FakeBackend
    base: int
    per_item: int
    seconds_per_batch: float = 0.0
    seconds_per_item: float = 0.0
    clock: FakeClock | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)

    def __call__(self, indices: list[int], device_label: str, index: int = 0) -> list[int]:
        self.calls.append((device_label, len(indices)))
        need = self.base + self.per_item * len(indices)
        self.backend.allocate(index, need)
        try:
            cost = self.seconds_per_batch + self.seconds_per_item * len(indices)
            if self.clock is not None:
                self.clock.advance(cost)
            elif cost:
                time.sleep(cost)
            return [i * 10 for i in indices]
        finally:
            self.backend.release(index, need)


class BookedModule(torch.nn.Module):
    """A model whose weights are booked on a fake card: moving it to ``meta``
    (what unloading does) gives the bytes back, as real storage would be freed."""

    def __init__(self, backend: FakeBackend, nbytes: int, on_card: bool) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(4, 4)
        self.backend, self.nbytes, self.on_card = backend, nbytes, on_card
        if on_card:
            backend.allocate(0, nbytes)

    def _apply(self, fn, recurse=True):  # type: ignore[no-untyped-def]
        result = super()._apply(fn, recurse)
        if self.on_card and self.layer.weight.device.type == "meta":
            self.backend.release(0, self.nbytes)  # the cache keeps it until cleared, like torch's
            self.on_card = False
        return result


def cpu_searcher(source: object) -> object:
    """An exact MaxSim searcher over ``source`` (a store or a vector source) on the CPU, under a runtime of its own."""
    from ragged.gpu import DeviceManager, Runtime
    from ragged.index.search import MaxSimSearcher

    runtime = Runtime(DeviceManager())
    return MaxSimSearcher(source, runtime.device("cpu"), runtime)  # type: ignore[arg-type]
