"""Out-of-memory recovery: clear the cache, halve the batch, move to the CPU.

The handler retries a failing call at most ``max_retries`` times, one
strategy per retry, in the spec's order. Memory is released only after the
``except`` block is left: the exception's traceback holds the failed
attempt's frames and tensors, so nothing here keeps the exception object.
"""

from __future__ import annotations

import functools
import gc
import inspect
import re
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
    "RecoveryStep",
    "RecoveryStrategy",
    "is_oom_error",
    "summarise_oom",
    "with_oom_handling",
]

T = TypeVar("T")
P = ParamSpec("P")


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
        """Short text for messages, e.g. ``halve batch -> 4 on cuda:0``."""
        what = {
            RecoveryStrategy.CLEAR_CACHE: "clear cache",
            RecoveryStrategy.REDUCE_BATCH: "halve batch",
            RecoveryStrategy.CPU_FALLBACK: "move to CPU",
        }[self.strategy]
        return f"{what} -> batch {self.batch_size} on {self.device.label}"


@dataclass
class OOMStats:
    """What the handler has seen: OOMs, recoveries by strategy, give-ups."""

    ooms: int = 0
    recoveries: Counter[RecoveryStrategy] = field(default_factory=Counter)
    failures: int = 0

    def as_dict(self) -> dict[str, int]:
        """Plain numbers for reports."""
        out = {"ooms": self.ooms, "failures": self.failures}
        out.update({s.value: self.recoveries.get(s, 0) for s in RecoveryStrategy})
        return out


def summarise_oom(exc: BaseException) -> str:
    """The gist of an OOM message for logs: a string, so no object is kept."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    first = re.sub(r"^\[enforce fail at [^\]]*\]\s*(err == 0\.\s*)?(data\.\s*)?", "", text.splitlines()[0])
    return first if len(first) <= 100 else first[:97] + "..."


class OOMHandler:
    """Multi-strategy OOM recovery for one call at a time."""

    def __init__(
        self,
        device_manager: DeviceManager | None = None,
        *,
        enable_cache_clearing: bool = True,
        enable_batch_reduction: bool = True,
        enable_cpu_fallback: bool = True,
        max_retries: int = 3,
        min_batch_size: int = 1,
        advice: str | None = None,
    ) -> None:
        if max_retries < 0 or min_batch_size < 1:
            raise ConfigurationError("max_retries must be >= 0 and min_batch_size >= 1.")
        self.manager = device_manager or default_device_manager()
        self.enable_cache_clearing = enable_cache_clearing
        self.enable_batch_reduction = enable_batch_reduction
        self.enable_cpu_fallback = enable_cpu_fallback
        self.max_retries = max_retries
        self.min_batch_size = min_batch_size
        self.advice = advice  # what to tell the user when every step failed; None: the batch-size advice
        self.stats = OOMStats()

    def plan(self, device: DeviceInfo, batch_size: int) -> list[RecoveryStep]:
        """The recovery steps for a call that failed on (device, batch_size).

        Order: clear the cache (once), halve the batch (once), move to the
        CPU (once, from an accelerator); remaining retries halve again. So a
        GPU at batch 8 tries 8, 4, then 4 on the CPU; the CPU at batch 8 tries
        8, 4, 2. Strategies that cannot apply are skipped.
        """
        steps: list[RecoveryStep] = []
        cur_device, cur_batch = device, batch_size
        cleared = moved = halved = False
        cpu = self.manager.cpu()
        while len(steps) < self.max_retries:
            can_halve = self.enable_batch_reduction and cur_batch > self.min_batch_size
            can_move = self.enable_cpu_fallback and cur_device.is_accelerator and not moved
            if self.enable_cache_clearing and not cleared:
                cleared = True
                strategy = RecoveryStrategy.CLEAR_CACHE
            elif can_halve and (not halved or not can_move):
                halved = True
                cur_batch = max(self.min_batch_size, cur_batch // 2)
                strategy = RecoveryStrategy.REDUCE_BATCH
            elif can_move:
                moved = True
                cur_device = cpu
                strategy = RecoveryStrategy.CPU_FALLBACK
            else:
                break
            steps.append(RecoveryStep(strategy, cur_device, cur_batch))
        return steps

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

    def run(self, fn: Callable[[DeviceInfo, int], T], device: DeviceInfo, batch_size: int) -> T:
        """Call ``fn(device, batch_size)``, recovering from OOMs by the plan."""
        steps = iter(self.plan(device, batch_size))
        tried: list[str] = []
        current_device, current_batch = device, batch_size
        while True:
            baseline = self.manager.counters(current_device).allocated
            try:
                return fn(current_device, current_batch)
            except Exception as exc:
                if not is_oom_error(exc):
                    raise
                self.stats.ooms += 1
                reason = summarise_oom(exc)
                step = next(steps, None)
                if step is None:
                    self.stats.failures += 1
                    clear_tracebacks(exc)
                    raise OutOfMemoryRecoveryError(
                        self._give_up_message(device, batch_size, tried, reason, self.advice)
                    ) from exc
            # Out of the except block: the failed attempt's frames are gone.
            logger.warning(
                "Out of memory on {} at batch {} ({}); recovering: {}",
                current_device.label, current_batch, reason, step.describe(),
            )
            self.release(current_device, baseline)
            self.stats.recoveries[step.strategy] += 1
            tried.append(step.describe())
            current_device, current_batch = step.device, step.batch_size

    @staticmethod
    def _give_up_message(
        device: DeviceInfo, batch_size: int, tried: list[str], reason: str, advice: str | None
    ) -> str:
        attempts = "; ".join(tried) if tried else "no recovery strategy enabled"
        advice = advice or (
            f"Use a smaller --batch-size (e.g. {max(1, batch_size // 4)}), "
            "close other programs using the device, or choose another with --device."
        )
        return f"Out of memory on {device.label} at batch {batch_size} ({reason}). Tried: {attempts}. {advice}"


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
    ``"cuda:1"``, or left out (auto-selected).
    """

    def decorate(fn: Callable[P, T]) -> Callable[P, T]:
        signature = inspect.signature(fn)
        for name in (device_arg, batch_size_arg):
            if name not in signature.parameters:
                raise TypeError(f"{fn.__qualname__} has no parameter {name!r} to manage.")

        @functools.wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
            active = handler or OOMHandler(**handler_options)
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

            return active.run(attempt, device, batch_size)

        return wrapper

    return decorate
