"""Out-of-memory recovery: the one engine, and what OOMs taught.

:class:`OOMHandler` is used by everything that can run out of memory: the
batch runner (ingest, query embedding, the text model), search, and the
``@with_oom_handling`` decorator. It has two parts.

The recovery sequence of one failing unit of work (a batch, a whole call)
is a small state machine, :class:`Recovery`::

    split (halve, down to min_batch_size) -> clear the cache and retry once
        -> move to the CPU once (from an accelerator) -> give up

Splitting comes first because torch's caching allocator already returns
its cached blocks and retries before it raises an OOM, so clearing the
cache alone rarely helps; it is kept for the single item that still fails
(fragmentation, other streams, MPS). Every step either shrinks the batch
or is taken once, so the sequence is finite without a retry count;
``max_retries`` can still cap it.

What OOMs taught is a ceiling per device and kind of work (``work``: page
embedding, search chunks, a decorated function...): after an OOM at size
``b`` no batch of ``b`` or more is tried again. The ceiling outlives the
call, so the next call starts at a size that fits, and it is lifted when
the device's available memory grows back (a co-tenant left) or after a run
of clean batches at the ceiling; each new OOM doubles that run.

Memory is released only after the ``except`` block is left: the exception's
traceback holds the failed attempt's frames and tensors.
"""

from __future__ import annotations

import functools
import gc
import inspect
import re
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ParamSpec, TypeVar

from loguru import logger

from ragged.errors import ConfigurationError, OutOfMemoryRecoveryError
from ragged.gpu.device_manager import DeviceHint, DeviceManager, default_device_manager
from ragged.gpu.oom_detection import clear_tracebacks, is_oom_error
from ragged.gpu.types import DeviceInfo

__all__ = [
    "OOMHandler",
    "OOMStats",
    "Recovery",
    "RecoveryStep",
    "RecoveryStrategy",
    "is_oom_error",
    "summarise_oom",
    "with_oom_handling",
]

T = TypeVar("T")
P = ParamSpec("P")

RELAX_FREE_FRACTION = 0.10  # available memory this much of the device above its level at the OOM lifts a ceiling


class RecoveryStrategy(StrEnum):
    """One way to get out of an OOM."""

    CLEAR_CACHE = "clear_cache"
    REDUCE_BATCH = "reduce_batch"
    CPU_FALLBACK = "cpu_fallback"


@dataclass(frozen=True)
class RecoveryStep:
    """Retry with this device and batch size, after applying ``strategy``."""

    strategy: RecoveryStrategy
    device: DeviceInfo
    batch_size: int

    def describe(self) -> str:
        """Short text for messages, e.g. ``split -> batch 4 on cuda:0``."""
        what = {
            RecoveryStrategy.CLEAR_CACHE: "clear cache",
            RecoveryStrategy.REDUCE_BATCH: "split",
            RecoveryStrategy.CPU_FALLBACK: "move to CPU",
        }[self.strategy]
        return f"{what} -> batch {self.batch_size} on {self.device.label}"


@dataclass
class OOMStats:
    """OOMs seen, recoveries by strategy, and give-ups."""

    ooms: int = 0
    recoveries: Counter[RecoveryStrategy] = field(default_factory=Counter)
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain numbers for reports."""
        out = {"ooms": self.ooms, "failures": self.failures}
        out.update({s.value: self.recoveries.get(s, 0) for s in RecoveryStrategy})
        return out

    def copy(self) -> OOMStats:
        """An independent copy (to take differences later)."""
        return OOMStats(self.ooms, Counter(self.recoveries), self.failures)

    def __sub__(self, earlier: OOMStats) -> OOMStats:
        """What happened since ``earlier`` was copied."""
        recoveries = Counter({s: self.recoveries[s] - earlier.recoveries[s] for s in RecoveryStrategy})
        return OOMStats(self.ooms - earlier.ooms, +recoveries, self.failures - earlier.failures)


def summarise_oom(exc: BaseException) -> str:
    """The gist of an OOM message for logs: a string, so no object is kept."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?(data\.\s*)?", "", text.splitlines()[0])
    return first if len(first) <= 100 else first[:97] + "..."


class Recovery:
    """Where one failing unit of work stands in the recovery sequence."""

    def __init__(self, handler: OOMHandler, device: DeviceInfo, batch_size: int,
                 min_batch_size: int | None = None, cpu_fallback: bool = True) -> None:
        self._handler = handler
        self._cpu_fallback = cpu_fallback  # False: the work cannot move (it runs its own parts elsewhere)
        self.device = device
        self.batch_size = batch_size
        self.min_batch_size = min_batch_size or handler.min_batch_size
        self.steps: list[RecoveryStep] = []
        self._cleared = False
        self._moved = False

    def next_step(self) -> RecoveryStep | None:
        """The next step after another OOM, or None: give up."""
        h = self._handler
        if h.max_retries is not None and len(self.steps) >= h.max_retries:
            return None
        if h.enable_batch_reduction and self.batch_size > self.min_batch_size:
            step = RecoveryStep(RecoveryStrategy.REDUCE_BATCH, self.device,
                                max(self.min_batch_size, self.batch_size // 2))
        elif h.enable_cache_clearing and not self._cleared:
            self._cleared = True
            step = RecoveryStep(RecoveryStrategy.CLEAR_CACHE, self.device, self.batch_size)
        elif h.enable_cpu_fallback and self._cpu_fallback and self.device.is_accelerator and not self._moved:
            self._moved = True
            self._cleared = False  # the CPU gets its own cache-clearing retry
            step = RecoveryStep(RecoveryStrategy.CPU_FALLBACK, h.manager.cpu(), self.batch_size)
        else:
            return None
        self.device, self.batch_size = step.device, step.batch_size
        self.steps.append(step)
        return step

    def describe(self) -> str:
        """What was tried, for the give-up message."""
        return "; ".join(s.describe() for s in self.steps) or "no recovery strategy enabled"


@dataclass
class _Lesson:
    """A ceiling one OOM taught."""

    ceiling: int  # the largest size still allowed
    failed_size: int
    available_at_failure: int | None  # bytes
    clean: int = 0  # successful batches at the ceiling since


class OOMHandler:
    """The one OOM recovery engine, with what OOMs taught kept across calls."""

    def __init__(
        self,
        device_manager: DeviceManager | None = None,
        *,
        enable_cache_clearing: bool = True,
        enable_batch_reduction: bool = True,
        enable_cpu_fallback: bool = True,
        max_retries: int | None = None,
        min_batch_size: int = 1,
        advice: str | None = None,
        relax_after: int = 32,
    ) -> None:
        if (max_retries is not None and max_retries < 0) or min_batch_size < 1 or relax_after < 1:
            raise ConfigurationError("max_retries must be >= 0, min_batch_size >= 1 and relax_after >= 1.")
        self.manager = device_manager or default_device_manager()
        self.enable_cache_clearing = enable_cache_clearing
        self.enable_batch_reduction = enable_batch_reduction
        self.enable_cpu_fallback = enable_cpu_fallback
        self.max_retries = max_retries
        self.min_batch_size = min_batch_size
        self.advice = advice  # what to tell the user when every step failed; None: the batch-size advice
        self.relax_after = relax_after
        self.stats = OOMStats()
        self._lessons: dict[tuple[str, str], _Lesson] = {}
        self._strikes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    # -- what OOMs taught ---------------------------------------------------

    def ceiling(self, device: DeviceInfo, work: str = "batch") -> int | None:
        """The largest size still allowed for ``work`` on ``device`` (None: no limit)."""
        lesson = self._lessons.get((work, device.label))
        return None if lesson is None else lesson.ceiling

    def clamp(self, device: DeviceInfo, size: int, work: str = "batch") -> int:
        """``size`` capped by what OOMs taught (unless batch reduction is off:
        then the size is never changed)."""
        if not self.enable_batch_reduction:
            return size
        ceiling = self.ceiling(device, work)
        return size if ceiling is None else max(1, min(size, ceiling))

    def learn_oom(self, device: DeviceInfo, size: int, work: str = "batch", available: int | None = None) -> None:
        """An OOM at ``size``: no batch of that size or more until the lesson is lifted."""
        key = (work, device.label)
        with self._lock:
            lesson = self._lessons.get(key)
            ceiling = max(1, size - 1 if lesson is None else min(lesson.ceiling, size - 1))
            self._lessons[key] = _Lesson(ceiling, size, available)
            self._strikes[key] += 1

    def learn_fit(self, device: DeviceInfo, size: int, work: str = "batch") -> None:
        """``size`` worked after an OOM: keep to it (not just below the failed
        size) until the lesson is lifted."""
        with self._lock:
            lesson = self._lessons.get((work, device.label))
            if lesson is not None:
                lesson.ceiling = max(1, min(lesson.ceiling, size))

    def learn_success(self, device: DeviceInfo, size: int, work: str = "batch", available: int | None = None) -> None:
        """A clean batch: count it, and lift the ceiling once memory grew back
        or enough clean batches ran at it."""
        key = (work, device.label)
        with self._lock:
            lesson = self._lessons.get(key)
            if lesson is None:
                return
            if size >= lesson.ceiling:
                lesson.clean += 1
            needed = self.relax_after * 2 ** (self._strikes[key] - 1)
            grew = (available is not None and lesson.available_at_failure is not None and device.total_memory > 0
                    and available >= lesson.available_at_failure + RELAX_FREE_FRACTION * device.total_memory)
            if not grew and lesson.clean < needed:
                return
            del self._lessons[key]
        why = "memory grew back" if grew else f"{needed} clean batches"
        logger.info("{}: {}; batches of {} may be tried again", device.label, why, lesson.failed_size)

    def forget(self) -> None:
        """Drop every lesson (new hardware, a new run that should start afresh)."""
        with self._lock:
            self._lessons.clear()
            self._strikes.clear()

    # -- one failing unit ---------------------------------------------------

    def recovery(self, device: DeviceInfo, batch_size: int, min_batch_size: int | None = None,
                 cpu_fallback: bool = True) -> Recovery:
        """A fresh recovery sequence for a unit that failed on (device, batch_size)."""
        return Recovery(self, device, batch_size, min_batch_size, cpu_fallback)

    def plan(self, device: DeviceInfo, batch_size: int, min_batch_size: int | None = None) -> list[RecoveryStep]:
        """Every step the sequence would take if each retry failed too."""
        recovery = self.recovery(device, batch_size, min_batch_size)
        while recovery.next_step() is not None:
            pass
        return recovery.steps

    def note_oom(self) -> None:
        """Count an OOM."""
        with self._lock:
            self.stats.ooms += 1

    def note_step(self, step: RecoveryStep) -> None:
        """Count a recovery step taken."""
        with self._lock:
            self.stats.recoveries[step.strategy] += 1

    def give_up(self, device: DeviceInfo, batch_size: int, recovery: Recovery, reason: str,
                cause: BaseException | None = None) -> OutOfMemoryRecoveryError:
        """The error for a unit whose every step failed (counted as a failure)."""
        with self._lock:
            self.stats.failures += 1
        advice = self.advice or (
            f"Use a smaller --batch-size (e.g. {max(1, batch_size // 4)}), "
            "close other programs using the device, or choose another with --device."
        )
        error = OutOfMemoryRecoveryError(
            f"Out of memory on {device.label} at batch {batch_size} ({reason}). Tried: {recovery.describe()}. {advice}"
        )
        error.__cause__ = cause
        return error

    def release(self, device: DeviceInfo, baseline_allocated: int | None = None) -> None:
        """Free what a failed attempt held and return cached blocks on ``device``.

        A young-generation collection (about 1 ms) frees the usual cycles;
        the full collection (100+ ms with transformers loaded) runs only when
        the allocator still holds more than ``baseline_allocated``, or when
        no baseline is known. Call only outside an ``except`` block, or the
        failed attempt's tensors are still referenced by the traceback.
        """
        gc.collect(1)
        if baseline_allocated is None or self.manager.counters(device).allocated > baseline_allocated:
            gc.collect()
        self.manager.clear_cache(device)

    def available_bytes(self, device: DeviceInfo) -> int | None:
        """What a batch could get on ``device`` now (free plus our unused cache)."""
        info = self.manager.try_memory_info(device)
        return None if info is None else info.available

    # -- whole calls --------------------------------------------------------

    def run(self, fn: Callable[[DeviceInfo, int], T], device: DeviceInfo, batch_size: int,
            *, work: str = "call", min_batch_size: int | None = None) -> T:
        """Call ``fn(device, batch_size)``, recovering from OOMs.

        The call starts at the size earlier OOMs allow for ``work``, and each
        retry follows the recovery sequence (splitting no lower than
        ``min_batch_size``, the handler's own by default)."""
        size = self.clamp(device, batch_size, work)
        current = device
        recovery: Recovery | None = None
        while True:
            baseline = self.manager.counters(current).allocated
            try:
                result = fn(current, size)
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                reason = summarise_oom(exc)
                clear_tracebacks(exc)  # keep the error for chaining, not its frames
                failure: BaseException = exc
            else:
                if current.same_device(device):
                    if recovery is not None:  # a whole call is costly to redo: keep to the size that worked
                        self.learn_fit(current, size, work)
                    self.learn_success(current, size, work)
                return result
            # Out of the except block: the failed attempt's frames are gone.
            self.note_oom()
            self.release(current, baseline)
            self.learn_oom(current, size, work, self.available_bytes(current))
            recovery = recovery or self.recovery(current, size, min_batch_size)
            step = recovery.next_step()
            if step is None:
                raise self.give_up(device, batch_size, recovery, reason, failure)
            logger.warning("Out of memory on {} at batch {} ({}); recovering: {}",
                           current.label, size, reason, step.describe())
            self.note_step(step)
            current, size = step.device, step.batch_size


def with_oom_handling(
    handler: OOMHandler | None = None,
    *,
    device_arg: str = "device",
    batch_size_arg: str = "batch_size",
    **handler_options: Any,
) -> Callable[[Callable[P, T]], Callable[P, T]]:
    """Decorate ``f(data, *, device, batch_size)`` so that OOMs are recovered.

    The function must process all of its input whatever the batch size, so
    a retry with a smaller batch or on the CPU returns the same result. The
    ``device`` argument may be a :class:`DeviceInfo`, a hint such as
    ``"cuda:1"``, or left out (auto-selected). One handler serves every
    call of the decorated function, so a size that ran out of memory once
    is not tried again by the next call.
    """

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        signature = inspect.signature(fn)
        for name in (device_arg, batch_size_arg):
            if name not in signature.parameters:
                raise TypeError(f"{fn.__qualname__} has no parameter {name!r} to manage.")
        owned: list[OOMHandler] = []  # made on the first call: no device detection at import

        def engine() -> OOMHandler:
            if handler is not None:
                return handler
            if not owned:
                owned.append(OOMHandler(**handler_options))
            return owned[0]

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            active = engine()
            bound = signature.bind_partial(*args, **kwargs)
            bound.apply_defaults()
            hint: DeviceHint = bound.arguments.get(device_arg)
            device = hint if isinstance(hint, DeviceInfo) else active.manager.get_optimal_device(hint)
            batch_size = bound.arguments.get(batch_size_arg)
            if not isinstance(batch_size, int) or batch_size < 1:
                raise ConfigurationError(f"{batch_size_arg} must be a positive integer, got {batch_size!r}.")

            def attempt(dev: DeviceInfo, size: int) -> T:
                bound.arguments[device_arg] = dev
                bound.arguments[batch_size_arg] = size
                return fn(*bound.args, **bound.kwargs)

            return active.run(attempt, device, batch_size, work=fn.__qualname__)

        wrapper.oom_handler = engine  # type: ignore[attr-defined]
        return wrapper

    return decorate
