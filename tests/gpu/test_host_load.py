"""The CPU load reading: other processes' use counts, this process's own does not."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import pytest

from ragged.gpu.backends import host_load
from ragged.gpu.backends.cpu import CPUBackend

SPIN = "import time\nend = time.monotonic() + 5\nwhile time.monotonic() < end:\n    pass\n"


def _while_own_thread_spins() -> float | None:
    stop = threading.Event()

    def spin() -> None:
        while not stop.is_set():
            pass

    worker = threading.Thread(target=spin, daemon=True)
    worker.start()
    try:
        return host_load.LoadMeter(min_window_s=0.5).read()
    finally:
        stop.set()
        worker.join(timeout=5)


def _while_a_child_spins() -> float | None:
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.3)  # past its start-up
        return CPUBackend().busy_elsewhere(0)
    finally:
        child.kill()
        child.wait(timeout=5)


def test_another_process_busy_counts_and_this_ones_own_work_does_not() -> None:
    own = _while_own_thread_spins()
    other = _while_a_child_spins()
    assert own is not None and other is not None
    # A busy loop elsewhere reads as most of a core; the same loop in this process is left out.
    assert other - own >= 0.5


def test_no_reading_where_the_system_gives_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OSError("no /proc here")

    monkeypatch.setattr(host_load.psutil, "cpu_times", refuse)
    assert host_load.LoadMeter(min_window_s=0.01).read() is None


def test_a_reading_spans_the_time_since_the_last_one_and_does_not_wait() -> None:
    meter = host_load.LoadMeter(min_window_s=0.1)
    child = subprocess.Popen([sys.executable, "-c", SPIN])
    try:
        time.sleep(0.8)  # the window the next reading covers: the child busy for most of it
        began = time.monotonic()
        busy = meter.read()
        took = time.monotonic() - began
    finally:
        child.kill()
        child.wait(timeout=5)
    assert busy is not None and busy >= 0.5
    assert took < 0.05  # the window was already long enough: nothing waited


def test_a_window_too_short_is_waited_out_and_one_too_old_is_started_afresh() -> None:
    short = host_load.LoadMeter(min_window_s=0.2)
    began = time.monotonic()
    assert short.read() is not None
    assert time.monotonic() - began >= 0.15  # the meter was made just now: the rest of 0.2 s is waited

    stale = host_load.LoadMeter(min_window_s=0.2, max_window_s=0.05)
    time.sleep(0.1)  # older than its longest window
    began = time.monotonic()
    assert stale.read() is not None
    assert time.monotonic() - began >= 0.15  # a fresh window of 0.2 s, not the stale one
