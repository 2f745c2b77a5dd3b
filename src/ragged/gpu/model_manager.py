"""Model lifecycle: admit by the memory policy, make room, unload when idle.

A model is admitted to a device only if it fits under the policy's line
with room left for one item of its work (a page, a passage), so a model is
never placed where every batch would have a budget of zero. If it does not
fit, making room has a price, and the manager weighs it:

- idle models on the device can be unloaded, those cheapest to load again
  first (the load time measured when each was loaded; before that, its
  size; costs within a factor of two count as equal, and then the least
  recently used goes first), each to be reloaded when next used;
- or, for an automatic device choice, the new model can run on the CPU.

A model at least ``CPU_SIZE_RATIO`` times smaller than what it would unload
goes to the CPU: its work there costs less than reloading the large model
every time the two take turns (a 90 MB text model beside a 6 GB vision
model, where ingest alternates between them at every flush). Otherwise
the idle models are unloaded. An explicitly chosen device is never left:
it is made room on or refused with a clear error. The :class:`Placement`
record says where each model went and why.

Unloading moves a model's tensors to the ``meta`` device, so its memory is
freed even while other objects still refer to the module; the next request
loads it again.
"""

from __future__ import annotations

import gc
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from enum import StrEnum
from types import TracebackType
from typing import TYPE_CHECKING

from loguru import logger

from ragged.errors import ModelDoesNotFitError, ModelError
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.oom_detection import clear_tracebacks, is_oom_error
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.recovery import summarise_oom
from ragged.gpu.types import DeviceInfo

if TYPE_CHECKING:
    import torch

Loader = Callable[[DeviceInfo], "torch.nn.Module"]
SizeFor = Callable[[DeviceInfo], int]  # bytes a model takes on a device (its dtype depends on the device)
_GIB = 1024**3
CPU_SIZE_RATIO = 8.0  # a model this many times smaller than what it would unload runs on the CPU instead
LOAD_BYTES_PER_S = 1.0 * _GIB  # the reload time assumed before a model's load has been timed


def _constant(n: int) -> SizeFor:
    return lambda _device: n


def _cost_class(seconds: float) -> int:
    """Reload costs within a factor of two (and all under 10 ms) count as equal:
    among equals, the least recently used model is unloaded first."""
    return math.floor(math.log2(max(seconds, 0.01)))


def _gib(n: int | None) -> str:
    return "unknown" if n is None else f"{n / _GIB:.2f} GiB"


@dataclass(frozen=True)
class Placement:
    """Where a model was loaded, and why there."""

    requested: DeviceInfo
    device: DeviceInfo
    reason: str | None = None  # why not on ``requested`` (None: it is there)
    batch_room_bytes: int | None = None  # the batch budget left once the model was loaded
    evicted: tuple[str, ...] = ()  # models unloaded to make room
    chose_cpu: bool = False  # placed on the CPU by choice (cheaper than unloading others), not for want of room

    @property
    def fell_back(self) -> bool:
        """True when the model is not on the device that was asked for."""
        return not self.device.same_device(self.requested)


class ModelEvent(StrEnum):
    """What happened to a model."""

    LOAD = "load"
    UNLOAD = "unload"
    IDLE_UNLOAD = "idle_unload"
    EVICT = "evict"
    FALLBACK = "fallback"


@dataclass
class ManagedModel:
    """One model the manager holds."""

    key: str
    model: torch.nn.Module
    placement: Placement
    size_bytes: int
    last_used: float
    pins: int = 0
    load_seconds: float | None = None  # how long its load took (the price of unloading it)

    @property
    def reload_seconds(self) -> float:
        """What unloading it would cost when it is next used: its measured
        load time, or an estimate from its size before one was measured."""
        return self.load_seconds if self.load_seconds is not None else self.size_bytes / LOAD_BYTES_PER_S

    @property
    def device(self) -> DeviceInfo:
        """Where the model is."""
        return self.placement.device


class ModelManager:
    """Loads models where the memory policy admits them and releases those
    no longer needed. Use as a context manager, or call :meth:`close`.

    Models unused for ``idle_timeout_s`` are unloaded on the next call, or by
    a background reaper (:meth:`start_reaper`)."""

    def __init__(
        self,
        device_manager: DeviceManager,
        *,
        idle_timeout_s: float | None = 300.0,
        policy: MemoryPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.manager = device_manager
        self.idle_timeout_s = idle_timeout_s
        self.policy = policy or MemoryPolicy()
        self._clock = clock
        self._models: dict[str, ManagedModel] = {}
        self._view: dict[str, ManagedModel] = {}  # a copy replaced after each change: read without the lock
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._reaper: threading.Thread | None = None
        self.counts: Counter[ModelEvent] = Counter()  # events by kind, for reports and metrics

    @property
    def loaded(self) -> dict[str, ManagedModel]:
        """Models currently held, by key. Never waits: a load in progress
        (which holds the lock for its whole length) is not shown yet, so
        ``/metrics`` and ``/health`` answer during one."""
        return dict(self._view)

    def _changed(self) -> None:
        self._view = dict(self._models)  # under the lock; one reference swap for readers

    def _event(self, event: ModelEvent) -> None:
        self.counts[event] += 1

    def room(self, device: DeviceInfo, size_bytes: int) -> int | None:
        """The batch budget ``device`` would have with ``size_bytes`` more loaded (None: unreadable)."""
        return self.policy.room_after(self.manager.try_memory_info(device), size_bytes)

    def _admitted(self, size_bytes: int, device: DeviceInfo, work_bytes: int) -> int | None:
        """The batch room left if the policy admits ``size_bytes`` with
        ``work_bytes`` of work room (one reading of the device), else None."""
        info = self.manager.try_memory_info(device)
        return self.policy.room_after(info, size_bytes) if self.policy.admits(info, size_bytes, work_bytes) else None

    def load(self, key: str, loader: Loader, size_bytes: int | SizeFor, device: DeviceInfo, *,
             work_bytes: int = 0, allow_fallback: bool = True) -> torch.nn.Module:
        """The model under ``key``, loaded if not yet held (see :meth:`acquire`)."""
        return self.acquire(key, loader, size_bytes, device, work_bytes=work_bytes,
                            allow_fallback=allow_fallback).model

    def acquire(self, key: str, loader: Loader, size_bytes: int | SizeFor, device: DeviceInfo, *,
                work_bytes: int = 0, allow_fallback: bool = True) -> ManagedModel:
        """The held record of ``key``, loading the model first if needed.

        ``size_bytes`` is the model's size (or a function of the device, as
        the dtype differs by device); ``work_bytes`` what one item of its work
        needs. With ``allow_fallback`` False (an explicit device) a model that
        does not fit raises :class:`~ragged.errors.ModelDoesNotFitError`."""
        size_for: SizeFor = size_bytes if callable(size_bytes) else _constant(size_bytes)
        with self._lock:
            self.unload_idle()
            held = self._models.get(key)
            if held is not None:
                held.last_used = self._clock()
                return held
            placement = self._place(key, size_for, work_bytes, device, allow_fallback)
            started = time.perf_counter()
            model = self._load_on(key, loader, placement, allow_fallback)
            if model is None:  # the real load ran out of memory: the CPU, if allowed
                placement = self._cpu_placement(key, size_for, work_bytes, device, placement.evicted,
                                                f"loading on {device.label} ran out of memory")
                started = time.perf_counter()
                model = self._load_on(key, loader, placement, False)
                assert model is not None
            held = ManagedModel(key, model, placement, size_for(placement.device), self._clock(),
                                load_seconds=time.perf_counter() - started)
            self._models[key] = held
            self._changed()
            self._event(ModelEvent.LOAD)
            if placement.fell_back:
                self._event(ModelEvent.FALLBACK)
                log = logger.info if placement.chose_cpu else logger.warning
                log("{} runs on {} instead of {}: {}", key, placement.device.label, placement.requested.label,
                    placement.reason)
            return held

    def _place(self, key: str, size_for: SizeFor, work_bytes: int, device: DeviceInfo,
               allow_fallback: bool) -> Placement:
        size = size_for(device)
        if (room := self._admitted(size, device, work_bytes)) is not None:
            return Placement(device, device, batch_room_bytes=room)
        victims = self._victims(device, size, work_bytes)
        cpu_allowed = allow_fallback and device.is_accelerator
        if victims and cpu_allowed and self._prefers_cpu(size, victims):
            names = ", ".join(f"{v.key} ({_gib(v.size_bytes)}, reloads in {v.reload_seconds:.1f} s)" for v in victims)
            reason = (f"running {key} ({_gib(size)}) on the CPU costs less than unloading {names} from "
                      f"{device.label}, which would be reloaded whenever it is used again")
            with suppress(ModelDoesNotFitError):  # no room in RAM either: make room on the device after all
                return replace(self._cpu_placement(key, size_for, work_bytes, device, (), reason), chose_cpu=True)
        evicted: list[str] = []
        for victim in victims:
            logger.info("Unloading {} to make room for {} on {}", victim.key, key, device.label)
            self._unload(victim.key, ModelEvent.EVICT)
            evicted.append(victim.key)
            if (room := self._admitted(size, device, work_bytes)) is not None:
                return Placement(device, device, batch_room_bytes=room, evicted=tuple(evicted))
        room = self.room(device, 0)
        reason = (f"{key} needs {_gib(size)} plus {_gib(work_bytes)} for one item, and {device.label} has "
                  f"{_gib(room)} under its {100 * self.policy.line_fraction:.0f}% line")
        if not cpu_allowed:
            raise ModelDoesNotFitError(
                f"{reason}. Free memory on it, use a smaller model, choose another device, "
                f"or raise the memory target (--memory-target, now {self.policy.target_utilisation:g})."
            )
        return self._cpu_placement(key, size_for, work_bytes, device, tuple(evicted), reason)

    def _victims(self, device: DeviceInfo, size: int, work_bytes: int) -> list[ManagedModel]:
        """The idle models on ``device`` to unload for ``size`` bytes (plus one
        item's work) to fit: the cheapest to reload first, as few as needed.
        All of them when even that would not do (the caller then finds out)."""
        idle = sorted((m for m in self._models.values() if not m.pins and m.device.same_device(device)),
                      key=lambda m: (_cost_class(m.reload_seconds), m.last_used))
        room = self.room(device, size)
        if room is None:
            return idle
        short = work_bytes - room
        chosen: list[ManagedModel] = []
        for victim in idle:
            if short <= 0:
                break
            chosen.append(victim)
            short -= victim.size_bytes
        return chosen

    @staticmethod
    def _prefers_cpu(size: int, victims: list[ManagedModel]) -> bool:
        """True when a model of ``size`` bytes is small enough beside what it
        would unload that running it on the CPU is the cheaper choice."""
        return size * CPU_SIZE_RATIO <= sum(v.size_bytes for v in victims)

    def _cpu_placement(self, key: str, size_for: SizeFor, work_bytes: int, requested: DeviceInfo,
                       evicted: tuple[str, ...], reason: str) -> Placement:
        cpu = self.manager.cpu()
        size = size_for(cpu)
        room = self._admitted(size, cpu, work_bytes)
        if room is None:
            raise ModelDoesNotFitError(
                f"{reason}; and its CPU copy ({_gib(size)}) does not fit in RAM either "
                f"({_gib(self.room(cpu, 0))} under the line). Use a smaller model or free memory."
            )
        return Placement(requested, cpu, reason=reason, batch_room_bytes=room, evicted=evicted)

    def _load_on(self, key: str, loader: Loader, placement: Placement,
                 allow_fallback: bool) -> torch.nn.Module | None:
        """Run the loader; None when it ran out of memory and the CPU may take over."""
        device = placement.device
        baseline = self.manager.counters(device).allocated
        try:
            return loader(device)
        except Exception as exc:
            if not is_oom_error(exc):
                raise
            reason = summarise_oom(exc)
            clear_tracebacks(exc)
        gc.collect()
        self.manager.clear_cache(device)
        if allow_fallback and device.is_accelerator:
            logger.warning("Loading {} on {} ran out of memory ({}); trying the CPU", key, device.label, reason)
            return None
        raise ModelError(
            f"Loading {key} on {device.label} ran out of memory ({reason}; {_gib(baseline)} was already "
            "allocated). Free memory on the device, use a smaller model, or choose another device."
        )

    def get(self, key: str) -> torch.nn.Module | None:
        """The model under ``key`` if held (marks it used), else None."""
        with self._lock:
            held = self._models.get(key)
            if held is None:
                return None
            held.last_used = self._clock()
            return held.model

    @contextmanager
    def using(self, key: str) -> Iterator[torch.nn.Module]:
        """Pin the model under ``key`` while the block runs (never unloaded)."""
        with self._lock:
            held = self._models.get(key)
            if held is None:
                raise KeyError(f"Model {key!r} is not loaded.")
            held.pins += 1
        with self._pinned(held):
            yield held.model

    @contextmanager
    def holding(self, key: str, loader: Loader, size_bytes: int | SizeFor, device: DeviceInfo, *,
                work_bytes: int = 0, allow_fallback: bool = True) -> Iterator[ManagedModel]:
        """:meth:`acquire` and pin in one step, under the lock: no other thread
        can unload the model between its load and its use."""
        with self._lock:
            held = self.acquire(key, loader, size_bytes, device, work_bytes=work_bytes,
                                allow_fallback=allow_fallback)
            held.pins += 1
        with self._pinned(held):
            yield held

    @contextmanager
    def _pinned(self, held: ManagedModel) -> Iterator[None]:
        """Unpin ``held`` (pinned by the caller) when the block ends."""
        try:
            yield
        finally:
            with self._lock:
                held.pins -= 1
                held.last_used = self._clock()

    def unload(self, key: str) -> bool:
        """Free the model under ``key``; False when it was not held."""
        return self._unload(key, ModelEvent.UNLOAD)

    def _unload(self, key: str, event: ModelEvent, idle_since: float | None = None) -> bool:
        """Free ``key``. With ``idle_since``, only if it is still unpinned and was
        not used after that moment (checked under the lock: another thread may
        have loaded it again and pinned it since it was chosen)."""
        with self._lock:
            held = self._models.get(key)
            if held is not None and idle_since is not None and (held.pins or held.last_used > idle_since):
                return False
            held = self._models.pop(key, None)
            self._changed()
        if held is None:
            return False
        held.model.to("meta")  # frees storage even if the module is referenced elsewhere
        gc.collect()
        self.manager.clear_cache(held.device)
        self._event(event)
        return True

    def unload_idle(self, now: float | None = None) -> list[str]:
        """Unload every unpinned model idle longer than the timeout."""
        if self.idle_timeout_s is None:
            return []
        now = self._clock() if now is None else now
        cutoff = now - self.idle_timeout_s
        with self._lock:
            idle = [m.key for m in self._models.values() if not m.pins and m.last_used < cutoff]
        unloaded = []
        for key in idle:
            if self._unload(key, ModelEvent.IDLE_UNLOAD, idle_since=cutoff):
                logger.info("Unloaded idle model {}", key)
                unloaded.append(key)
        return unloaded

    def start_reaper(self, interval_s: float = 30.0) -> None:
        """Check for idle models every ``interval_s`` in a daemon thread."""
        if self._reaper is not None:
            return
        self._stop.clear()

        def loop() -> None:
            while not self._stop.wait(interval_s):
                self.unload_idle()

        self._reaper = threading.Thread(target=loop, name="ragged-model-reaper", daemon=True)
        self._reaper.start()

    def close(self) -> None:
        """Stop the reaper and unload every model."""
        self._stop.set()
        if self._reaper is not None:
            self._reaper.join(timeout=5)
            self._reaper = None
        for key in list(self._models):
            self.unload(key)

    def __enter__(self) -> ModelManager:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
