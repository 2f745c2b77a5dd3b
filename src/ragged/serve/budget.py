"""What a search request may cost, decided before any work starts.

Scoring a query against the page vectors costs in proportion to its tokens
times the pages (each query token meets every page vector once), so one
request of 32 long queries over a few thousand pages can hold the worker
for minutes, and its answer (queries x k hits) can run to megabytes. Each
request is estimated from what it asks (queries, their length, ``k``,
the mode, the pages in the index) and refused with 413 when it alone is
over a limit; requests admitted but not yet answered are counted, and a
new one that would take them over the queue's limit is refused with 429,
so a burst of requests cannot pile up unbounded work (or memory).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from ragged.query.modes import Mode

VISION_MODES = (Mode.VISION, Mode.HYBRID)  # the modes that score every query token against every page


@dataclass(frozen=True)
class RequestLimits:
    """Limits on one request and on the work queued at once."""

    # Estimated query tokens x pages one request may ask for: 32 queries of ten words over 10,000 pages
    # (~10 M) pass; a 2-core CPU scores about 1 M a second, a GPU a hundred times that.
    max_work: int = 16_000_000
    max_hits: int = 4_000  # hits one answer may hold (queries x k, at most the pages)
    max_queued_work: int = 48_000_000  # work of every admitted request not yet answered
    max_query_tokens: int = 512  # the models cut a query here (ColPaliEmbedder.max_query_tokens)


@dataclass(frozen=True)
class Cost:
    """What one request asks for."""

    work: int  # query tokens x pages (the vision and hybrid modes); queries x pages otherwise
    hits: int  # hits the answer will hold

    def refusal(self, limits: RequestLimits, queries: int, k: int) -> str | None:
        """Why the request is too large to run (a 413), or None."""
        if self.hits > limits.max_hits:
            return (f"The answer would hold {self.hits:,} hits ({queries} queries x k {k}); at most "
                    f"{limits.max_hits:,} a request: lower 'k' or send fewer queries.")
        if self.work > limits.max_work:
            return (f"The request would score about {self.work:,} query tokens x pages; at most "
                    f"{limits.max_work:,} a request: send fewer or shorter queries.")
        return None


def query_tokens(query: str, cap: int) -> int:
    """An upper estimate of the tokens the model sees for ``query``: about
    one per three bytes of UTF-8 plus the prompt's own, at most ``cap`` plus
    the prompt (no tokenizer in the event loop)."""
    return min(cap, len(query.encode("utf-8")) // 3 + 1) + 16


def estimate(queries: Sequence[str], k: int, mode: Mode, pages: int, limits: RequestLimits) -> Cost:
    """The cost of a request over an index of ``pages`` pages."""
    pages = max(pages, 1)
    if mode in VISION_MODES:
        work = sum(query_tokens(q, limits.max_query_tokens) for q in queries) * pages
    else:  # one vector (text) or a keyword lookup per query: cheap by comparison
        work = len(queries) * pages
    return Cost(work, len(queries) * min(k, pages))


class Admission:
    """Counts the work of requests admitted and not yet answered (thread-safe)."""

    def __init__(self, limits: RequestLimits) -> None:
        self.limits = limits
        self.queued = 0
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, work: int) -> Iterator[bool]:
        """Yields True with ``work`` counted until the block ends, or False
        (nothing counted) when the queue is full. A request alone is always
        admitted, whatever its size under ``max_work``."""
        with self._lock:
            admitted = self.queued == 0 or self.queued + work <= self.limits.max_queued_work
            if admitted:
                self.queued += work
        try:
            yield admitted
        finally:
            if admitted:
                with self._lock:
                    self.queued -= work
