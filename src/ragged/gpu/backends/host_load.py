"""How much CPU other processes are using: a reading over the time since the last one.

On a CPU the batch size that runs fastest depends on whether torch's
threads have the cores to themselves: measured on 2 cores, the tiny
presets ran fastest at 1-16 pages a batch with the cores idle and at 16-32
with a busy loop on one of them, in every run (``docs/benchmarks.md``,
"Adaptive batching"). The sizer's first CPU batch is therefore chosen from
this reading rather than from one constant.

The reading is the machine's busy CPU time less this process's own, over a
window. A :class:`LoadMeter` takes its first sample when it is made (the
CPU backend's, so as the device manager starts) and each reading runs from
the previous sample: the window that ends at a sizer's first batch spans
the model's load and costs nothing. Only a window shorter than
``WINDOW_S`` is waited out, and one older than ``MAX_WINDOW_S`` is started
afresh, so that a co-tenant that came minutes ago is not diluted away.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass

import psutil

WINDOW_S = 0.1  # the shortest window: ten clock ticks, where a busy process shows as most of a core
MAX_WINDOW_S = 120.0  # a window older than this is started afresh (and WINDOW_S waited)


@dataclass(frozen=True)
class _Sample:
    machine: float  # CPU seconds the whole machine spent busy since boot (all cores)
    own: float  # CPU seconds this process used (all its threads)
    at: float  # time.monotonic() when taken


def _sample() -> _Sample:
    """Read the counters (OSError, AttributeError or NotImplementedError
    where the system does not give them)."""
    t = psutil.cpu_times()
    busy = float(sum(t)) - float(t.idle) - float(getattr(t, "iowait", 0.0))
    own = os.times()
    return _Sample(busy, own.user + own.system, time.monotonic())


def _try_sample() -> _Sample | None:
    try:
        return _sample()
    except (OSError, AttributeError, NotImplementedError):
        return None


class LoadMeter:
    """Cores' worth of CPU time other processes used, over the window since
    the previous reading (see the module docstring). Thread-safe."""

    def __init__(self, min_window_s: float = WINDOW_S, max_window_s: float = MAX_WINDOW_S) -> None:
        self.min_window_s = min_window_s
        self.max_window_s = max_window_s
        self._lock = threading.Lock()
        self._last = _try_sample()

    def read(self) -> float | None:
        """Other processes' use since the last reading, in cores (waits out
        the rest of a window shorter than ``min_window_s``); None where the
        system does not say."""
        with self._lock:
            try:
                start = self._last
                if start is None or time.monotonic() - start.at > self.max_window_s:
                    start = _sample()
                wait = self.min_window_s - (time.monotonic() - start.at)
                if wait > 0:
                    time.sleep(wait)
                end = _sample()
            except (OSError, AttributeError, NotImplementedError):
                self._last = None
                return None
            self._last = end
        elapsed = end.at - start.at
        return max(0.0, (end.machine - start.machine) - (end.own - start.own)) / elapsed if elapsed > 0 else None
