"""The one family of figures about batch work, with one vocabulary.

:class:`OOMStats` counts out-of-memory errors and recoveries;
:class:`RunStats` holds what a run of batches did (its items, batches, peaks,
time, recoveries), and the same record sums many runs (:meth:`RunStats.absorb`):
a call's report, an ingest's vision and text sides and each Ray worker's
share are all ``RunStats`` (or records built on it). Items are items
everywhere (pages for the vision model, passages for the text model), and
:func:`plain` is the one serialiser to JSON-ready data.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from ragged.gpu.throughput import SizingRecord


class RecoveryStrategy(StrEnum):
    """One way to get out of an OOM."""

    CLEAR_CACHE = "clear_cache"
    REDUCE_BATCH = "reduce_batch"
    CPU_FALLBACK = "cpu_fallback"


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

    def __iadd__(self, other: OOMStats) -> OOMStats:
        self.ooms += other.ooms
        self.recoveries.update(other.recoveries)
        self.failures += other.failures
        return self


@dataclass
class RunStats:
    """What batch work did (memory in bytes, times in seconds; None: unknown).

    One run's figures, or the sum of several (:meth:`absorb`)."""

    device: str = ""
    items: int = 0
    seconds: float = 0.0
    prepare_seconds: float = 0.0  # waiting for preparation, successful batches only
    compute_seconds: float = 0.0  # inside compute, successful batches only
    batch_sizes: list[int] = field(default_factory=list)
    batch_peaks: list[int | None] = field(default_factory=list)  # per batch, above the baseline; None: unknown
    budget_bytes: int | None = None  # what the policy allowed a batch at the last decision
    budget_warning: str | None = None
    cpu_fallback_items: int = 0
    failed_items: int = 0
    prepared_items: int = 0  # items preprocessed (more than ``items`` when preparation was redone)
    oom: OOMStats = field(default_factory=OOMStats)
    sizing: SizingRecord | None = None  # what the sizer had learnt by the end (None: fixed batches)

    @property
    def work_seconds(self) -> float:
        """Time inside the batch function (preparation and compute)."""
        return self.prepare_seconds + self.compute_seconds

    @property
    def peak_bytes(self) -> int | None:
        """The largest known batch peak above the baseline (None: none known)."""
        known = [p for p in self.batch_peaks if p is not None]
        return max(known) if known else None

    @property
    def items_per_second(self) -> float:
        """Throughput."""
        return self.items / self.seconds if self.seconds > 0 else 0.0

    @property
    def overhead_fraction(self) -> float:
        """Share of the time spent outside the batch function (management)."""
        return max(0.0, 1.0 - self.work_seconds / self.seconds) if self.seconds > 0 else 0.0

    @property
    def ooms(self) -> int:
        """Out-of-memory errors met."""
        return self.oom.ooms

    @property
    def recoveries(self) -> dict[str, int]:
        """Recovery steps taken, by strategy (every strategy listed)."""
        return {s.value: self.oom.recoveries.get(s, 0) for s in RecoveryStrategy}

    def absorb(self, other: RunStats) -> None:
        """Add ``other``'s figures to these (latest budget and device win)."""
        self.device = other.device or self.device
        self.items += other.items
        self.seconds += other.seconds
        self.prepare_seconds += other.prepare_seconds
        self.compute_seconds += other.compute_seconds
        self.batch_sizes.extend(other.batch_sizes)
        self.batch_peaks.extend(other.batch_peaks)
        if other.budget_bytes is not None:
            self.budget_bytes = other.budget_bytes
        self.budget_warning = self.budget_warning or other.budget_warning
        self.cpu_fallback_items += other.cpu_fallback_items
        self.failed_items += other.failed_items
        self.prepared_items += other.prepared_items
        self.oom += other.oom
        self.sizing = other.sizing or self.sizing


_DERIVED = ("peak_bytes", "items_per_second", "ooms", "recoveries", "overhead_fraction")
_PER_BATCH = {"batch_peaks"}  # long lists: summarised by peak_bytes in plain data


def plain(record: Any) -> Any:
    """``record`` as JSON-ready data: dataclasses become dicts (with the
    derived figures of :class:`RunStats` added, per-batch peaks left out and
    floats rounded), enums their values, lists and dicts recursively."""
    if isinstance(record, OOMStats):
        return record.as_dict()
    if dataclasses.is_dataclass(record) and not isinstance(record, type):
        out = {f.name: plain(getattr(record, f.name)) for f in dataclasses.fields(record)
               if f.name not in _PER_BATCH and f.name != "oom"}
        if isinstance(record, RunStats):
            out.update({name: plain(getattr(record, name)) for name in _DERIVED})
        return out
    if isinstance(record, StrEnum):
        return record.value
    if isinstance(record, float):
        return round(record, 3)
    if isinstance(record, dict):
        return {str(k): plain(v) for k, v in record.items()}
    if isinstance(record, list | tuple):
        return [plain(v) for v in record]
    return record


__all__ = ["OOMStats", "RecoveryStrategy", "RunStats", "plain"]
