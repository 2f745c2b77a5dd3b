"""What one embedding call did and returned, for people and for JSON.

:class:`EmbeddingReport` is the batch figures of the one stats family
(:class:`~ragged.gpu.stats.RunStats`) plus the model's own: which model, in
what dtype, where it was placed and why. :class:`Embedded` is what a call
returns: a result per input, its report and its notices, as values, so
two callers of one embedder never read each other's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Generic, TypeVar

from ragged.gpu.batch_runner import ItemFailure, every_result
from ragged.gpu.model_manager import Placement
from ragged.gpu.stats import RunStats, plain

T = TypeVar("T")


@dataclass
class EmbeddingReport(RunStats):
    """A model's batch figures (bytes, seconds): one call's, or several summed."""

    model: str = ""
    dtype: str = ""
    device_total_bytes: int = 0
    model_bytes: int = 0  # the weights on the device
    placement_note: str | None = None  # why the model is not on the requested device
    batch_room_bytes: int | None = None  # the budget the model left for batches when it was placed

    @classmethod
    def from_stats(cls, stats: RunStats, *, model: str, dtype: str, device_total_bytes: int,
                   placement: Placement | None = None, model_bytes: int = 0) -> EmbeddingReport:
        """A report of ``stats`` run by ``model`` (placed as ``placement`` says)."""
        copied = {f.name: getattr(stats, f.name) for f in fields(RunStats)}
        return cls(**copied, model=model, dtype=dtype, device_total_bytes=device_total_bytes,
                   model_bytes=model_bytes, placement_note=placement.reason if placement is not None else None,
                   batch_room_bytes=placement.batch_room_bytes if placement is not None else None)

    def absorb(self, other: RunStats) -> None:
        """Add ``other``'s figures (a report's model details: latest wins, the first placement note stays)."""
        super().absorb(other)
        if isinstance(other, EmbeddingReport):
            self.model = other.model or self.model
            self.dtype = other.dtype or self.dtype
            self.device_total_bytes = other.device_total_bytes or self.device_total_bytes
            self.model_bytes = other.model_bytes or self.model_bytes
            self.placement_note = self.placement_note or other.placement_note
            if other.batch_room_bytes is not None:
                self.batch_room_bytes = other.batch_room_bytes

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        data: dict[str, Any] = plain(self)
        return data


@dataclass(frozen=True)
class Notice:
    """Something a caller should tell the user about one input of a call."""

    item: int  # the input's position in the call
    text: str  # e.g. "Query cut to its first 512 tokens (it had 2,310)."


@dataclass(frozen=True)
class Embedded(Generic[T]):
    """One call's results (one per input, in input order; an input that could
    not be embedded is an :class:`~ragged.gpu.batch_runner.ItemFailure`),
    its report, and its notices (a query cut to the model's length)."""

    results: list[T | ItemFailure]
    report: EmbeddingReport
    notices: tuple[Notice, ...] = field(default=())

    def notices_of(self, item: int) -> tuple[str, ...]:
        """The notices about input ``item``."""
        return tuple(n.text for n in self.notices if n.item == item)

    def values(self) -> list[T]:
        """Every result, typed as present (a failure among them raises)."""
        return every_result(self.results)


__all__ = ["Embedded", "EmbeddingReport", "Notice"]
