"""How much CPU other processes are using now: a short, direct reading.

On a CPU the batch size that runs fastest depends on whether torch's
threads have the cores to themselves: measured on 2 cores, the tiny
presets ran fastest at 1-16 pages a batch with the cores idle and at 16-32
with a busy loop on one of them, in every run (``docs/benchmarks.md``,
"Adaptive batching"). The sizer's first CPU batch is therefore chosen from
this reading rather than from one constant.
"""

from __future__ import annotations

import os
import time

import psutil

WINDOW_S = 0.1  # ten clock ticks: a busy process shows as most of a core; short beside a model load


def _busy_seconds() -> float:
    """CPU seconds spent busy by the whole machine since boot (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t)) - float(t.idle) - float(getattr(t, "iowait", 0.0))


def _own_seconds() -> float:
    """CPU seconds used by this process (all its threads) since it started."""
    t = os.times()
    return t.user + t.system


def busy_elsewhere(window_s: float = WINDOW_S) -> float | None:
    """Cores' worth of CPU time other processes used over the next
    ``window_s`` seconds (this thread sleeps meanwhile); None where the
    system does not say."""
    try:
        machine, own, began = _busy_seconds(), _own_seconds(), time.monotonic()
        time.sleep(window_s)
        machine, own = _busy_seconds() - machine, _own_seconds() - own
    except (OSError, AttributeError, NotImplementedError):
        return None
    elapsed = time.monotonic() - began
    return max(0.0, machine - own) / elapsed if elapsed > 0 else None
