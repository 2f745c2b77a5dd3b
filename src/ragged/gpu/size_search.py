"""Which batch size is fastest: a search over sizes from paired, repeated samples.

Pure (no clock, no device): :class:`SizeSearch` is fed one sample per
finished batch (its size, its load per second, whether the sample can be
trusted) and asked for the next size below a memory limit that the caller
works out. What it does:

- **Ladder.** The chosen size (the *incumbent*) has two neighbours, one
  growth step up and one down. Only neighbours are tried, so a batch never
  grows by more than the growth factor at once.
- **Paired probes.** A neighbour is compared with the incumbent by
  alternating them (c, i, c, i, ...); each adjacent pair gives the log of
  their rates' ratio. Both halves of a pair see the same machine, so a
  co-tenant that comes and goes moves both. After ``PAIRS_FIRST`` pairs
  (``PAIRS_MIN`` once earlier probes have measured the noise, so a large
  difference is acted on quickly) :func:`~ragged.gpu.throughput.compare`
  judges the median log ratio against the noise. Faster: the neighbour
  becomes the incumbent (and the search goes on in that direction). The
  same: the smaller of the two is kept (the same speed for less memory;
  on a plateau this pulls back a size that noise once carried too far).
  Slower: it loses. Behind (it cannot be chosen: one standard error above
  its median is still short of the gain a larger size needs, or of the
  incumbent's speed less the gain for a smaller one): it loses at once,
  since every further pair would spend a batch at a size that would not be
  chosen only to confirm that. Undecided: more pairs, up to
  ``PAIRS_MAX``, where the side the evidence leans to (by the gain and one
  standard error) wins: a larger neighbour faster by the gain, a smaller
  one as fast within it; else the incumbent stays. So one slow sample
  never decides, a plateau or a peak stops the search, and a slower
  neighbour costs few batches.
- **Looking past a level step.** A smaller neighbour whose probe ends
  undecided after ``PAIRS_MAX`` pairs is level with the incumbent as far as
  the noise lets it be told. The next probe down then compares the size
  past it with the incumbent directly (once; the neighbour is probed again
  after that): a level step one size wide would otherwise hide faster
  sizes below it from a search that compares neighbours only. Going down
  is always safe for memory.
- **Warm-up.** The first batch at a size pays one-off costs (kernels chosen
  per shape, memory grown); it is not a sample.
- **Back-off.** A neighbour that lost waits ``BACKOFF_START`` batches before
  it is tried again, twice as long after each further loss, at most
  ``BACKOFF_MAX``: a stop is never for good, and probing stays a bounded
  share of the batches.
- **Memory.** The caller's memory limit always wins. While it holds
  batches below the incumbent they run at the limit; after
  ``CLAMP_STREAK`` such batches the limit becomes the incumbent (and the
  search goes on below it), and the earlier choice comes back as soon as
  memory allows it again: a co-tenant's memory does not erase what was
  measured.
- **Change.** The incumbent's recent median rate is compared with its
  median when it was chosen. A shift (a co-tenant arrived or left) beyond
  ``CHANGE`` and beyond the noise of the two medians (``CHANGE_SIGMAS``
  standard errors of their difference, from the samples' own spread: a busy
  machine's samples swing by 30-50%, and a swing must not restart the
  search) makes both neighbours due at once, so a size that became slow is
  left for a better one, smaller or larger.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from loguru import logger

from ragged.gpu.throughput import (
    MAD_TO_SD,
    MEDIAN_SE,
    SizeChoice,
    SizeRate,
    SizingRecord,
    Verdict,
    Why,
    compare,
)

PAIRS_FIRST = 3  # pairs before a probe may decide while the noise is not yet known
PAIRS_MIN = 2  # once earlier probes have measured the noise
PAIRS_MAX = 10  # the last look of a probe: the side the evidence leans to wins, else the incumbent stays
PROBE_MAX_BATCHES = 3 * PAIRS_MAX  # a probe that cannot gather its pairs (unusable samples) ends unsure
BACKOFF_START = 16  # batches before a neighbour that lost is tried again
BACKOFF_MAX = 512  # the longest wait after repeated losses
CHANGE = 0.25  # a shift of the incumbent's median rate by this share makes the neighbours due
CHANGE_WINDOW = 5  # samples of the incumbent in its reference and in its recent median
CHANGE_SIGMAS = 2.5  # and the shift must clear this many standard errors of the medians' difference
CLAMP_STREAK = 4  # consecutive batches held below the incumbent by memory before it moves there
RATE_WINDOW = 16  # recent samples kept per size for the record
NOISE_WINDOW = 40  # deviations of past probes' ratios kept to estimate the noise


@dataclass
class _Wait:
    due: int  # batch count from which the size may be probed again
    length: int  # the wait that set it


@dataclass
class _Probe:
    candidate: int
    began: int  # batch count when it started
    ratios: list[float] = field(default_factory=list)
    pending: tuple[int, float] | None = None  # the first half of a pair


class SizeSearch:
    """Finds the fastest batch size by paired probes between ladder neighbours
    (see the module docstring). ``name`` labels its debug log lines."""

    def __init__(self, *, growth_factor: float, min_gain: float, min_size: int, name: str = "batch") -> None:
        self.growth_factor = growth_factor
        self.min_gain = min_gain
        self.min_size = min_size
        self.name = name
        self.incumbent: int | None = None
        self._probe: _Probe | None = None
        self._waits: dict[int, _Wait] = {}
        self._seen: set[int] = set()
        self._deviations: deque[float] = deque(maxlen=NOISE_WINDOW)  # of past probes' log ratios
        self._level: int | None = None  # a smaller neighbour that probed level: the next probe down looks past it
        self._rates: dict[int, deque[float]] = {}
        self._reference: list[float] = []  # the incumbent's first samples since it was chosen
        self._recent: deque[float] = deque(maxlen=CHANGE_WINDOW)
        self._clamped = 0  # consecutive batches the limit held below the incumbent
        self._before_memory: int | None = None  # the choice memory pushed down, taken back when room returns
        self._chosen: list[SizeChoice] = []
        self.batches = 0
        self.probes = 0
        self.probe_batches = 0

    # -- the ladder -------------------------------------------------------

    def up(self, size: int, limit: int) -> int | None:
        """One growth step above ``size`` within ``limit`` (None: none)."""
        step = min(limit, max(size + 1, math.floor(size * self.growth_factor)))
        return step if step > size else None

    def down(self, size: int) -> int | None:
        """One growth step below ``size`` (None: at the smallest)."""
        step = max(self.min_size, min(size - 1, math.ceil(size / self.growth_factor)))
        return step if step < size else None

    def _due(self, size: int | None, at: int) -> bool:
        wait = self._waits.get(size) if size is not None else None
        return size is not None and (wait is None or at >= wait.due)

    # -- choosing ---------------------------------------------------------

    def begin(self, size: int) -> None:
        """Set the first size (the caller's start rule); once."""
        if self.incumbent is None:
            self._choose(max(self.min_size, size), Why.START)

    def next_size(self, limit: int) -> int:
        """The size of the next batch, at most ``limit``; may start a probe."""
        if self.incumbent is None:
            self.begin(limit)
        assert self.incumbent is not None
        if self._before_memory is not None and limit >= self._before_memory:
            self._choose(self._before_memory, Why.ROOM)
        if limit < self.incumbent:
            self._clamped += 1
            if self._clamped >= CLAMP_STREAK:
                self._choose(max(self.min_size, limit), Why.MEMORY)
            return max(self.min_size, limit)
        self._clamped = 0
        probe = self._probe
        if probe is not None and probe.candidate > limit:
            self._end_probe(Verdict.UNSURE, "the memory limit fell below it", penalise=False)
            probe = None
        if probe is None and self.incumbent in self._seen:  # the incumbent's own warm-up comes first
            probe = self._start_probe(limit)
        return self.incumbent if probe is None else self._probe_step(probe)

    def predict_after(self, size: int, limit: int) -> int:
        """What :meth:`next_size` will likely say once a usable batch of
        ``size`` is recorded (changes nothing): prepared-ahead batches use it."""
        inc = self.incumbent if self.incumbent is not None else limit
        if self._before_memory is not None and limit >= self._before_memory:
            return self._before_memory  # room again: the earlier choice comes back (any probe is dropped)
        if limit < inc:
            return max(self.min_size, limit)
        probe = self._probe
        if probe is not None:
            pairs = len(probe.ratios) + (probe.pending is not None and probe.pending[0] != size)
            if pairs >= (PAIRS_MIN if len(self._deviations) >= PAIRS_FIRST else PAIRS_FIRST):
                return inc  # it may decide now; staying is the likelier outcome
            if size == probe.candidate and size not in self._seen:
                return size  # that was the warm-up: the pair starts now
            return inc if size == probe.candidate else probe.candidate
        if inc not in self._seen and size != inc:
            return inc
        for neighbour in (self.up(inc, limit), self._below(inc, self.batches + 1)):
            if neighbour is not None and self._due(neighbour, self.batches + 1):
                return neighbour
        return inc

    def _probe_step(self, probe: _Probe) -> int:
        """The candidate (its warm-up, or a pair's first half), else the incumbent to close the pair."""
        assert self.incumbent is not None
        if probe.candidate not in self._seen or probe.pending is None:
            return probe.candidate
        return self.incumbent if probe.pending[0] == probe.candidate else probe.candidate

    def _below(self, size: int, at: int) -> int | None:
        """The size a probe down from ``size`` tries at batch ``at``: its lower
        neighbour, or the one past it (when due) once that neighbour probed level."""
        step = self.down(size)
        past = self.down(step) if step is not None and step == self._level else None
        return past if past is not None and self._due(past, at) else step

    def _start_probe(self, limit: int) -> _Probe | None:
        assert self.incumbent is not None
        for neighbour in (self.up(self.incumbent, limit), self._below(self.incumbent, self.batches)):
            if neighbour is not None and self._due(neighbour, self.batches):
                self._probe = _Probe(neighbour, self.batches)
                self.probes += 1
                if neighbour < self.incumbent:
                    self._level = None  # looked past once; the next probe down is the neighbour again
                return self._probe
        return None

    # -- learning ---------------------------------------------------------

    def observe(self, size: int, rate: float | None, *, usable: bool = True) -> None:
        """One finished batch of ``size`` at ``rate`` (load per second).
        ``usable`` False (disturbed, e.g. by a costly measurement) or a first
        batch at this size (warm-up) counts the batch but not its rate. A
        batch cut short by the end of the items is a sample of the size it
        had (the caller passes that size)."""
        self.batches += 1
        warm = size in self._seen
        self._seen.add(size)
        probe = self._probe
        if probe is not None:
            self.probe_batches += 1
        if usable and warm and rate is not None and rate > 0:
            self._rates.setdefault(size, deque(maxlen=RATE_WINDOW)).append(rate)
            if size == self.incumbent:
                self._watch(rate)
            if probe is not None and size in (probe.candidate, self.incumbent):
                self._pair(probe, size, rate)
        if self._probe is not None and self.batches - self._probe.began >= PROBE_MAX_BATCHES:
            self._end_probe(Verdict.UNSURE, "too few usable pairs", penalise=True)

    def _pair(self, probe: _Probe, size: int, rate: float) -> None:
        if probe.pending is None or probe.pending[0] == size:
            probe.pending = (size, rate)
            return
        first_size, first_rate = probe.pending
        candidate_rate, incumbent_rate = (rate, first_rate) if size == probe.candidate else (first_rate, rate)
        probe.ratios.append(math.log(candidate_rate / incumbent_rate))
        probe.pending = None
        noise_known = len(self._deviations) >= PAIRS_FIRST
        if len(probe.ratios) < (PAIRS_MIN if noise_known else PAIRS_FIRST):
            return
        typical = statistics.median(self._deviations) if noise_known else 0.0
        last = len(probe.ratios) >= PAIRS_MAX
        larger = None if self.incumbent is None else probe.candidate > self.incumbent
        verdict = compare(probe.ratios, self.min_gain, typical, last=last, larger=larger)
        if verdict is not Verdict.UNSURE or last:
            self._end_probe(verdict, f"{len(probe.ratios)} pairs", penalise=True)

    def _end_probe(self, verdict: Verdict, note: str, *, penalise: bool) -> None:
        probe, self._probe = self._probe, None
        assert probe is not None and self.incumbent is not None
        mid = statistics.median(probe.ratios) if probe.ratios else math.nan
        n = len(probe.ratios)
        if n >= PAIRS_MIN:  # deviations from a median of n lie closer than the noise: widened to make up
            self._deviations.extend(abs(mid - x) * math.sqrt(n / (n - 1)) for x in probe.ratios)
        logger.debug("{}: batch {}: size {} vs {}: {} (median rate ratio {:.3f}, {})", self.name, self.batches,
                     probe.candidate, self.incumbent, verdict.value, math.exp(mid), note)
        if verdict is Verdict.UNSURE and n >= PAIRS_MAX and probe.candidate == self.down(self.incumbent):
            self._level = probe.candidate  # level, as far as the noise lets it be told
        if verdict is Verdict.FASTER or (verdict is Verdict.SAME and probe.candidate < self.incumbent):
            loser = self.incumbent
            self._choose(probe.candidate, Why.FASTER if verdict is Verdict.FASTER else Why.SMALLER)
            self._waits.pop(probe.candidate, None)
            self._waits[loser] = _Wait(self.batches + BACKOFF_START, BACKOFF_START)
            return
        previous = self._waits.get(probe.candidate)
        length = BACKOFF_START if previous is None else previous.length
        if penalise and previous is not None:
            length = min(BACKOFF_MAX, 2 * length)
        self._waits[probe.candidate] = _Wait(self.batches + length, length)

    def _watch(self, rate: float) -> None:
        """Change detection on the incumbent's own samples."""
        if len(self._reference) < CHANGE_WINDOW:
            self._reference.append(rate)
            return
        self._recent.append(rate)
        if len(self._recent) < CHANGE_WINDOW:
            return
        before, now = statistics.median(self._reference), statistics.median(self._recent)
        if abs(math.log(now / before)) <= max(math.log1p(CHANGE), CHANGE_SIGMAS * self._shift_error()):
            return
        logger.debug("{}: batch {}: size {} went from {:,.0f} to {:,.0f} load/s; neighbours due now", self.name,
                     self.batches, self.incumbent, before, now)
        for wait in self._waits.values():
            wait.due = min(wait.due, self.batches)
        self._reference.clear()
        self._recent.clear()

    def _shift_error(self) -> float:
        """Standard error of the difference of the two log-rate medians, from
        the samples' own spread (MAD about each window's median, pooled)."""
        deviations: list[float] = []
        for window in (self._reference, self._recent):
            logs = [math.log(x) for x in window]
            mid = statistics.median(logs)
            deviations.extend(abs(x - mid) for x in logs)
        sd = MAD_TO_SD * statistics.median(deviations)
        return math.sqrt(2) * MEDIAN_SE * sd / math.sqrt(CHANGE_WINDOW)

    def _choose(self, size: int, why: Why) -> None:
        if why is Why.MEMORY:
            self._probe = None  # its pairs were against the size memory no longer allows
            self._before_memory = max(self._before_memory or 0, self.incumbent or 0)
        elif why is Why.ROOM:
            self._probe = None
            self._before_memory = None
        if size != self.incumbent:
            logger.debug("{}: batch {}: size {} chosen ({})", self.name, self.batches, size, why.value)
            self._chosen.append(SizeChoice(self.batches, size, why))
        self.incumbent = size
        self._level = None
        self._clamped = 0
        self._reference.clear()
        self._recent.clear()

    def record(self) -> SizingRecord:
        """What has been learnt so far."""
        rates = tuple(
            SizeRate(size, statistics.median(xs), statistics.median(abs(x - statistics.median(xs)) for x in xs),
                     len(xs))
            for size, xs in sorted(self._rates.items()) if xs
        )
        return SizingRecord(tuple(self._chosen), rates, self.batches, self.probes, self.probe_batches)
