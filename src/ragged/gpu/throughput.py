"""Throughput evidence: judging one batch size against another, and the
record of what a sizer learnt.

:func:`compare` is the statistics behind every decision of
:class:`~ragged.gpu.size_search.SizeSearch`; :class:`SizingRecord` is what a
sizer shows of its choices (``AdaptiveBatchSizer.record()``, ``RunStats.sizing``).
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

MAD_TO_SD = 1.4826  # the MAD of normal data times this estimates its standard deviation
MEDIAN_SE = 1.2533  # the standard error of a median is this times that of a mean
SIGMAS = 2.0  # how many standard errors a difference must clear
GAIN_SIGMAS = 1.0  # and how many beyond the minimum gain


class Verdict(StrEnum):
    """How a neighbour compared with the incumbent."""

    FASTER = "faster"
    SLOWER = "slower"
    SAME = "same"
    BEHIND = "behind"  # not shown slower, but short of what it needs to be chosen: its probe can end
    UNSURE = "unsure"


def compare(log_ratios: list[float], min_gain: float, typical_mad: float = 0.0, *, last: bool = False,
            larger: bool | None = None) -> Verdict:
    """Judge a neighbour from log(rate_neighbour / rate_incumbent) pairs.

    The median is held against a band from the noise: the standard error of
    the median, from the larger of these pairs' MAD and ``typical_mad`` (that
    of earlier probes: a few pairs alone often look quieter than they are).
    Faster means above ``min_gain`` plus one standard error and above two
    standard errors; slower, the same below zero; the same, within
    ``min_gain`` with two standard errors inside it too; else unsure. The
    ``last`` look of a probe drops the two-error condition: the samples are
    spent, and the side the evidence leans to is the better bet. For a
    smaller neighbour that side is "as fast" once one standard error below
    its median is within the gain (the mirror of *behind*, below): on a
    plateau too noisy to rank, the smaller size keeps the speed and frees
    memory.

    ``larger`` says which side of the incumbent the neighbour is on, and so
    what it needs to be chosen: a larger size must be faster by the gain, a
    smaller one only as fast within it (the same speed for less memory).
    Once the median plus one standard error falls short of that, the
    neighbour is behind: more pairs would only confirm that it is not chosen,
    and each costs a batch at a size that would not be chosen. Without
    ``larger`` this is not judged."""
    if not log_ratios:
        return Verdict.UNSURE
    mid = statistics.median(log_ratios)
    mad = max(typical_mad, statistics.median(abs(x - mid) for x in log_ratios))
    error = MEDIAN_SE * MAD_TO_SD * mad / math.sqrt(len(log_ratios))
    gain = math.log1p(min_gain)
    band = gain + GAIN_SIGMAS * error if last else max(gain + GAIN_SIGMAS * error, SIGMAS * error)
    if mid > band:
        return Verdict.FASTER
    if last and larger is False and mid - GAIN_SIGMAS * error >= -gain:
        return Verdict.SAME  # as fast within the gain by one standard error: less memory wins
    if mid < -band:
        return Verdict.SLOWER
    if abs(mid) <= gain and SIGMAS * error < gain:
        return Verdict.SAME
    if larger is not None and mid + GAIN_SIGMAS * error < (gain if larger else -gain):
        return Verdict.BEHIND
    return Verdict.UNSURE


class Why(StrEnum):
    """Why the chosen size changed."""

    START = "start"
    FASTER = "faster"  # a probe showed the new size faster
    SMALLER = "smaller"  # a probe showed the smaller size as fast: the same speed for less memory
    MEMORY = "memory"  # the memory limit (budget or OOM ceiling) held batches below it
    ROOM = "room"  # memory allows the size chosen before it held batches below that again


@dataclass(frozen=True)
class SizeChoice:
    """From batch ``batch`` (counted over the sizer's life) on, ``size`` was chosen."""

    batch: int
    size: int
    why: Why


@dataclass(frozen=True)
class SizeRate:
    """Recent usable samples of one size: load per second."""

    size: int
    median: float
    mad: float  # median absolute deviation of the samples
    samples: int


@dataclass(frozen=True)
class SizingRecord:
    """What a sizer learnt: sizes chosen over time, rates per size, probing."""

    chosen: tuple[SizeChoice, ...]
    rates: tuple[SizeRate, ...]
    batches: int
    probes: int
    probe_batches: int  # batches run inside probes (either size)

    @property
    def current(self) -> int | None:
        """The size chosen now (None before the first batch)."""
        return self.chosen[-1].size if self.chosen else None

    def describe(self) -> str:
        """One line: the choices, then the rates per size."""
        path = " -> ".join(f"{c.size} ({c.why.value}, batch {c.batch})" for c in self.chosen) or "nothing yet"
        rates = ", ".join(f"{r.size}: {r.median:,.0f}/s +-{r.mad / r.median:.0%} ({r.samples})"
                          for r in self.rates if r.median > 0)
        return (f"sizes {path}; load/s by size {rates or '-'}; {self.probes} probes, "
                f"{self.probe_batches} of {self.batches} batches")

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready form."""
        return {"chosen": [{"batch": c.batch, "size": c.size, "why": c.why.value} for c in self.chosen],
                "rates": [{"size": r.size, "median": r.median, "mad": r.mad, "samples": r.samples}
                          for r in self.rates],
                "batches": self.batches, "probes": self.probes, "probe_batches": self.probe_batches}
