"""Rankings of the pages by each signal, and how they are fused.

Reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009) scores a page
by the sum over the rankings that found it of ``1 / (60 + rank)``. It needs
no calibration between MaxSim sums, cosines and BM25 scores, which live on
unrelated scales; the constant 60 is the one the paper found best across
collections and that Elasticsearch, OpenSearch and LanceDB use by default:
large enough that a page first in one list does not drown one found second
and third by the others. Each ranking contributes its first ``depth`` pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ragged.index.catalog import Catalog
from ragged.index.results import SearchHit
from ragged.index.search import top_k
from ragged.index.store import IndexStore

RRF_K = 60
MIN_DEPTH = 100  # each ranking contributes at least this many pages to a fusion


@dataclass(frozen=True)
class Ranking:
    """One signal's ranking: catalog positions best first, and their scores."""

    positions: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float


def vision_ranking(scores: np.ndarray, depth: int) -> Ranking:
    """Pages by MaxSim (a column of the searcher's (pages, queries) scores;
    pages the candidate stage left out, at -inf, are not ranked)."""
    order = top_k(scores, depth)
    order = order[np.isfinite(scores[order])]
    return Ranking(order, scores[order])


def keyword_ranking(store: IndexStore, catalog: Catalog, query: str, depth: int,
                    notices: list[str] | None = None) -> Ranking:
    """Pages by BM25 over their text (only pages in ``catalog``); what changed
    about the query (a phrase searched as words) is added to ``notices``."""
    position = {(p.doc_hash, p.page): n for n, p in enumerate(catalog.pages)}
    found = [(position[(h.doc_hash, h.page)], h.score) for h in store.keyword(query, depth, notices)
             if (h.doc_hash, h.page) in position]
    return Ranking(np.array([p for p, _ in found], dtype=np.int64), np.array([s for _, s in found]))


@dataclass(frozen=True)
class Fused:
    """A page's place in the fused list."""

    position: int
    score: float
    signals: dict[str, int] = field(default_factory=dict)  # signal -> 1-based rank in it


def fuse(rankings: dict[str, Ranking], k: int) -> list[Fused]:
    """Reciprocal rank fusion of ``rankings``: the ``k`` best pages."""
    scores: dict[int, float] = {}
    signals: dict[int, dict[str, int]] = {}
    for name, ranking in rankings.items():
        for rank, position in enumerate(ranking.positions.tolist(), 1):
            scores[position] = scores.get(position, 0.0) + 1.0 / (RRF_K + rank)
            signals.setdefault(position, {})[name] = rank
    best = sorted(scores, key=lambda p: (-scores[p], p))[:k]
    return [Fused(p, scores[p], signals[p]) for p in best]


def hits(catalog: Catalog, fused: Sequence[Fused]) -> list[SearchHit]:
    """Search hits for fused positions."""
    pages = catalog.pages
    return [SearchHit(pages[f.position].path, pages[f.position].page, f.score, pages[f.position].doc_hash,
                      dict(f.signals)) for f in fused]


def single(name: str, ranking: Ranking, k: int) -> list[Fused]:
    """One ranking as a result list (its own scores, its ranks as the signal)."""
    return [Fused(int(p), float(s), {name: n}) for n, (p, s) in
            enumerate(zip(ranking.positions[:k], ranking.scores[:k], strict=True), 1)]


def depth_for(k: int) -> int:
    """How many pages each ranking contributes to a fusion for ``k`` hits."""
    return max(MIN_DEPTH, 4 * k)
