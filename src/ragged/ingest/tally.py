"""Counters an embedding call adds to a report: one place for the ingest
report and a distributed worker's report, so the two never drift."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ragged.embeddings.report import EmbeddingReport


class Tally(Protocol):
    """What an ingest or worker report counts about batches (memory in bytes)."""

    batch_sizes: list[int]
    peak_bytes: int | None
    ooms: int
    recoveries: dict[str, int]
    cpu_fallback_pages: int
    failed_pages: int


class TextTally(Protocol):
    """What a report counts about the text side."""

    passages: int
    text_seconds: float


def add_embedding(into: Tally, part: EmbeddingReport) -> None:
    """Add one embedding call's batch figures to ``into``."""
    _add(into, part.batch_sizes, part.peak_bytes, part.ooms, part.recoveries, part.cpu_fallback_items,
         part.failed_items)


def add_tally(into: Tally, part: Tally) -> None:
    """Add another report's batch figures to ``into``."""
    _add(into, part.batch_sizes, part.peak_bytes, part.ooms, part.recoveries, part.cpu_fallback_pages,
         part.failed_pages)


def _add(into: Tally, batch_sizes: Sequence[int], peak_bytes: int | None, ooms: int, recoveries: dict[str, int],
         cpu_fallback: int, failed: int) -> None:
    into.batch_sizes.extend(batch_sizes)
    if peak_bytes is not None:
        into.peak_bytes = max(into.peak_bytes or 0, peak_bytes)
    into.ooms += ooms
    for name, count in recoveries.items():
        into.recoveries[name] = into.recoveries.get(name, 0) + count
    into.cpu_fallback_pages += cpu_fallback
    into.failed_pages += failed
