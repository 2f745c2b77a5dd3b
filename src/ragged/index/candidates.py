"""Candidates first, then exact MaxSim: search that does not score every page.

Each page keeps a few pooled vectors beside its own (the candidate stage,
:mod:`ragged.multivector.pooling`). A search scores every page's pooled
vectors (about 40 times less work than its own for 700-vector pages),
takes each query's best :data:`CANDIDATES` pages and scores those
exactly, in fp16/f32 through the one kernel, as a full scan would. The
hits are exact MaxSim scores; only which pages get scored is approximate.

How many candidates is decided per query, by measuring the stage on that
query: :data:`PROBE` pages spread over the index are scored both ways,
as are the candidates, and the largest amount by which the stage
underrated any page scored both ways so far is the margin (taken again
each round: the candidates' own errors count, so a margin seen on the
probe alone cannot understate it as much). While a page left out, given
that margin, could still beat the ``depth``-th best exact score so far,
the candidates double (up to every page: a full scan). A stage that ranks pages well for a query stops at
the first round; one that cannot tell pages apart (a model with random
weights, whose pages all look alike) widens itself to a full scan rather
than return a ranking it cannot vouch for. Pages without a stage (a
document committed by a ragged before it, until the next ingest's upkeep
pools it) are always scored exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ragged.index.search import MaxSimSearcher, StagedSource

CANDIDATES = 256  # pages scored exactly a query at first (measured: see docs/benchmarks.md)
PROBE = 64  # pages scored both ways to measure how far the stage underrates pages


def first_round(depth: int) -> int:
    """Candidates a query starts with for ``depth`` hits."""
    return max(CANDIDATES, 2 * depth)


def probe_positions(staged: np.ndarray) -> np.ndarray:
    """:data:`PROBE` staged pages spread evenly over the catalog (the same for every query)."""
    positions = np.flatnonzero(staged)
    if len(positions) <= PROBE:
        return positions
    return positions[np.linspace(0, len(positions) - 1, PROBE).astype(np.int64)]


def candidate_scores(searcher: MaxSimSearcher, source: StagedSource, queries: Sequence[np.ndarray],
                     depth: int) -> np.ndarray:
    """Exact MaxSim of each query's candidates (the union over the queries):
    (pages, queries), -inf for pages not scored."""
    catalog = source.catalog
    pages = len(catalog.pages)
    staged = catalog.staged
    count = np.full(len(queries), first_round(depth), dtype=np.int64)  # candidates of each query
    if int(count[0]) + PROBE >= int(staged.sum()):
        return searcher.score_all(queries)  # a small index (or one without its stage): every page costs as little
    approx = np.full((pages, len(queries)), -np.inf, dtype=np.float32)
    searcher.score_into(queries, source.pooled_blocks, approx)  # (pages, queries): the stage's scores
    exact = np.full((pages, len(queries)), -np.inf, dtype=np.float32)
    probe = probe_positions(staged)
    chosen = ~staged  # pages without a stage are always scored
    chosen[probe] = True
    order = np.argsort(-approx, axis=0, kind="stable")  # (pages, queries): each query's pages by the stage
    ranked = int(staged.sum())  # staged pages come first in each order (the rest score -inf)
    scored = np.zeros(pages, dtype=bool)
    want = min(depth, pages)
    while True:
        for j in range(len(queries)):
            chosen[order[: count[j], j]] = True
        new = np.flatnonzero(chosen & ~scored)
        if len(new):
            searcher.score_into(queries, partial(source.page_blocks, new), exact)
            scored[new] = True
        both = np.flatnonzero(scored & staged)  # every page scored both ways so far: the probe and the candidates
        margin = np.max(exact[both] - approx[both], axis=0) if len(both) else np.zeros(len(queries))  # (queries,)
        kth = -np.partition(-exact, want - 1, axis=0)[want - 1]  # (queries,) the depth-th best exact score so far
        left = np.array([approx[order[c, j], j] if c < ranked else -np.inf for j, c in enumerate(count.tolist())])
        short = (left + margin > kth) & (count < ranked)  # a page left out might still make the depth best
        if not short.any():
            return exact
        count[short] *= 2
