"""Out-of-memory recovery: the one engine, its one loop, and what OOMs taught.

:class:`OOMHandler` is used by everything that can run out of memory: the
batch runner (ingest, query embedding, the text model, the server's request
batches), search, model loading, and the spec's ``@with_oom_handling``. It
has three parts.

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

The loop that drives it is :meth:`OOMHandler.recovering`, the only one:
it yields :class:`Attempt` objects; the caller runs its work inside
``with attempt:``, which catches an OOM there, and the loop (outside any
``except`` block, so the failed attempt's frames and tensors are gone)
releases memory, learns, logs and yields the next step's attempt, or
raises the give-up error. :meth:`OOMHandler.run` (a whole call) and the
batch runner (a batch split into sub-batches, items kept) both use it.

What OOMs taught is a ceiling per device and kind of work (``work``: page
embedding, search chunks, a decorated function...): after an OOM at size
``b`` no batch of ``b`` or more is tried again. The ceiling outlives the
call, so the next call starts at a size that fits, and it is lifted when
the device's available memory grows back (a co-tenant left) or after a run
of clean batches at the ceiling; each new OOM doubles that run.
"""

from __future__ import annotations

import gc
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import TypeVar

from loguru import logger

from ragged.errors import ConfigurationError, OutOfMemoryRecoveryError, RaggedError
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.oom_detection import clear_tracebacks, is_oom_error
from ragged.gpu.stats import OOMStats, RecoveryStrategy
from ragged.gpu.types import AllocatorCounters, DeviceInfo

__all__ = [
    "Attempt",
    "OOMHandler",
    "OOMStats",
    "Recovery",
    "RecoveryOptions",
    "RecoveryStep",
    "RecoveryStrategy",
    "is_oom_error",
    "summarise_oom",
]

T = TypeVar("T")
RELAX_FREE_FRACTION = 0.10  # available memory this much of the device above its level at the OOM lifts a ceiling


@dataclass(frozen=True)
class RecoveryOptions:
    """Which recovery strategies run, and their limits (the spec's
    "configurable strategy enable/disable")."""

    enable_cache_clearing: bool = True
    enable_batch_reduction: bool = True
    enable_cpu_fallback: bool = True
    max_retries: int | None = None
    min_batch_size: int = 1
    advice: str | None = None  # what to tell the user when every step failed; None: the batch-size advice
    relax_after: int = 32  # clean batches at a ceiling before it is lifted (doubled by each new OOM)

    @classmethod
    def none(cls) -> RecoveryOptions:
        """No recovery at all: an OOM is given up on at once (for measuring plain batches)."""
        return cls(enable_cache_clearing=False, enable_batch_reduction=False, enable_cpu_fallback=False)


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
    """The one OOM recovery engine, with what OOMs taught kept across calls.

    A :class:`~ragged.gpu.runtime.Runtime` builds the one instance of a
    program (or a private one for a spec-style call) and hands it down."""

    def __init__(
        self,
        device_manager: DeviceManager,
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
        self.manager = device_manager
        self.enable_cache_clearing = enable_cache_clearing
        self.enable_batch_reduction = enable_batch_reduction
        self.enable_cpu_fallback = enable_cpu_fallback
        self.max_retries = max_retries
        self.min_batch_size = min_batch_size
        self.advice = advice
        self.relax_after = relax_after
        self.stats = OOMStats()
        self._lessons: dict[tuple[str, str], _Lesson] = {}
        self._strikes: Counter[tuple[str, str]] = Counter()
        self._lock = threading.Lock()

    @classmethod
    def with_options(cls, device_manager: DeviceManager, options: RecoveryOptions) -> OOMHandler:
        """A handler with ``options``' strategies and limits."""
        return cls(device_manager, enable_cache_clearing=options.enable_cache_clearing,
                   enable_batch_reduction=options.enable_batch_reduction,
                   enable_cpu_fallback=options.enable_cpu_fallback, max_retries=options.max_retries,
                   min_batch_size=options.min_batch_size, advice=options.advice, relax_after=options.relax_after)

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
                cause: BaseException | None = None, advice: str | None = None) -> OutOfMemoryRecoveryError:
        """The error for a unit whose every step failed (counted as a failure)."""
        with self._lock:
            self.stats.failures += 1
        advice = advice or self.advice or (
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

    # -- the one loop -----------------------------------------------------

    def recovering(self, device: DeviceInfo, size: int, *, work: str, min_batch_size: int | None = None,
                   cpu_fallback: bool = True, learn: Callable[[Attempt, int | None], None] | None = None,
                   before_step: Callable[[RecoveryStep], None] | None = None,
                   advice: str | None = None) -> Iterator[Attempt]:
        """Attempts at a unit of work that started on (``device``, ``size``).

        Run each attempt's work inside ``with attempt:``. After a clean
        attempt the loop yields another at the same place (the caller stops
        when its unit is done); after an OOM it releases what the attempt
        held, learns (``learn(attempt, available bytes)``, by default a
        ceiling for ``work``), and yields the next step's attempt, or raises
        :class:`~ragged.errors.OutOfMemoryRecoveryError` when none is left.
        ``before_step`` readies a CPU fallback step (a :class:`RaggedError`
        from it means the step is not possible). ``cpu_fallback`` False is
        for work that cannot move (it places its own parts); ``advice`` what
        the give-up error tells the user (the handler's by default)."""
        attempt = Attempt(self.manager, device, size, 0)
        recovery: Recovery | None = None
        while True:
            yield attempt
            if attempt.ok is None:
                raise RuntimeError("Run each attempt inside 'with attempt:'.")
            if attempt.ok:
                attempt = Attempt(self.manager, attempt.device, attempt.size, attempt.steps)
                continue
            # Out of the except block: the failed attempt's frames are gone.
            self.note_oom()
            self.release(attempt.device, attempt.baseline)
            available = self.available_bytes(attempt.device)
            if learn is not None:
                learn(attempt, available)
            else:
                self.learn_oom(attempt.device, attempt.size, work, available)
            recovery = recovery or self.recovery(attempt.device, attempt.size, min_batch_size, cpu_fallback)
            step = recovery.next_step()
            reason = attempt.reason or "out of memory"
            if step is not None and step.strategy is RecoveryStrategy.CPU_FALLBACK and before_step is not None:
                try:
                    before_step(step)
                except RaggedError as exc:  # no room for a CPU copy: this step is not possible
                    reason, step = f"{reason}; no CPU fallback: {exc}", None
            if step is None:
                raise self.give_up(device, size, recovery, reason, attempt.error, advice)
            logger.warning("Out of memory on {} at batch {} ({}); recovering: {}",
                           attempt.device.label, attempt.size, attempt.reason, step.describe())
            self.note_step(step)
            attempt = Attempt(self.manager, step.device, step.batch_size, attempt.steps + 1)

    # -- whole calls --------------------------------------------------------

    def run(self, fn: Callable[[DeviceInfo, int], T], device: DeviceInfo, batch_size: int,
            *, work: str = "call", min_batch_size: int | None = None, advice: str | None = None) -> T:
        """Call ``fn(device, batch_size)``, recovering from OOMs.

        The call starts at the size earlier OOMs allow for ``work``, and each
        retry follows the recovery sequence (splitting no lower than
        ``min_batch_size``, the handler's own by default). A whole call is
        costly to redo: after a recovery it keeps to the size that worked."""
        for attempt in self.recovering(device, self.clamp(device, batch_size, work), work=work,
                                       min_batch_size=min_batch_size, advice=advice):
            with attempt:
                result = fn(attempt.device, attempt.size)
            if attempt.ok:
                if attempt.device.same_device(device):
                    if attempt.steps:
                        self.learn_fit(attempt.device, attempt.size, work)
                    self.learn_success(attempt.device, attempt.size, work)
                return result
        raise AssertionError("recovering() ends by returning an attempt or raising")  # pragma: no cover


class Attempt:
    """One try of a unit of work on (``device``, ``size``): ``with attempt:``
    runs it, catching an out-of-memory error there (any other error goes
    through). Afterwards ``ok`` says how it went; a failure keeps only the
    error's type and message (its frames are dropped)."""

    def __init__(self, manager: DeviceManager, device: DeviceInfo, size: int, steps: int) -> None:
        self._manager = manager
        self.device = device
        self.size = size
        self.steps = steps  # recovery steps taken before this attempt
        self.ok: bool | None = None
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.before = AllocatorCounters(0, 0, None)  # the allocator's counters when the attempt began

    @property
    def baseline(self) -> int:
        """Bytes the allocator held when the attempt began."""
        return self.before.allocated

    def __enter__(self) -> Attempt:
        self.before = self._manager.counters(self.device)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> bool:
        if exc is None:
            self.ok = True
            return False
        if not isinstance(exc, Exception) or not is_oom_error(exc):
            return False
        self.ok, self.reason = False, summarise_oom(exc)
        clear_tracebacks(exc)  # keep the error for chaining, not its frames
        self.error = exc
        return True
