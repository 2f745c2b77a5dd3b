"""Rankings of the pages by each signal, and hybrid fusion that listens: each
ranking counts as far as it knows something.

Reciprocal rank fusion (Cormack, Clarke and Buettcher, 2009) gives every
ranking the same say, so a ranking that knows nothing (the random-weight
vision presets, or a real model that cannot read a kind of page) drags the
fused list down to its level: on the project's benchmark, text alone found
the right page first for 0.89 of the questions and equal-weight fusion for
0.54. Two things decide how far a ranking is heard here:

* **a weight per signal, learned from the index itself** (no labels): a few
  of its pages are asked for by a run of their own words ("probes"), and a
  signal that does not put a page first for its own words is not listening
  to the query. The weight is that signal's mean reciprocal rank of the
  probed page among the probed pages, less what chance gives, scaled to
  [0, 1]. A random-weight model scores about 0; a real ColPali or text
  model, which read these words on the page, close to 1. Keyword search
  finds copied words by construction, so it is not probed;
* **a confidence per keyword hit**: the share of the query's words the page
  holds, squared. BM25 ranks a page that shares one word of a paraphrased
  question as first as it ranks an exact name; the share tells them apart.

The fused score of a page is the sum over rankings of ``weight x confidence
/ (K + rank)`` with ``K = 10``, divided by the most a page could get (first
everywhere), so it reads in [0, 1]. K is smaller than RRF's customary 60:
with three rankings and the first page as the goal, a page first in one
listening ranking must not lose to one found fifth and sixth by two; on
both labelled corpora K from 2 to 10 gave the same results and 60 worse
(docs/benchmarks.md). Pages found only by rankings of weight 0 come last,
in their own order.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ragged.index.catalog import Catalog
from ragged.index.results import SearchHit
from ragged.index.search import top_k
from ragged.index.store import IndexStore
from ragged.query.weights import SignalWeights

FUSION_K = 10
MIN_DEPTH = 100  # each ranking contributes at least this many pages to a fusion

_STOP_WORDS = ("a an and are as at be but by can do does for from how i if in into is it its me my no not of on or "
               "our should so such than that the their them then there these they this to was we were what when "
               "where which who whom why will with would you your")
_STOP = frozenset(_STOP_WORDS.split())
_SUFFIXES = ("ing", "ed", "es", "s", "er", "ly")


@dataclass(frozen=True)
class Ranking:
    """One signal's ranking: catalog positions best first, their scores, and
    optionally how far each page answers the whole query (None: fully)."""

    positions: np.ndarray  # (n,) int64
    scores: np.ndarray  # (n,) float
    confidence: np.ndarray | None = None  # (n,) in [0, 1]


@dataclass(frozen=True)
class Fused:
    """A page's place in the fused list."""

    position: int
    score: float
    signals: dict[str, int]  # signal -> 1-based rank in it


def fuse(rankings: Mapping[str, Ranking], k: int, weights: SignalWeights | None = None,
         constant: int = FUSION_K) -> list[Fused]:
    """The ``k`` best pages of ``rankings`` fused (see the module's docstring;
    ``constant`` is its K)."""
    weights = weights or SignalWeights()
    scores: dict[int, float] = {}
    best_rank: dict[int, int] = {}
    signals: dict[int, dict[str, int]] = {}
    most = 0.0
    for name, ranking in rankings.items():
        weight = weights.of(name)
        if len(ranking.positions):
            most += weight / (constant + 1)
        confidence = ranking.confidence if ranking.confidence is not None else np.ones(len(ranking.positions))
        for rank, (position, sure) in enumerate(zip(ranking.positions.tolist(), confidence.tolist(), strict=True), 1):
            scores[position] = scores.get(position, 0.0) + weight * sure / (constant + rank)
            best_rank[position] = min(best_rank.get(position, rank), rank)
            signals.setdefault(position, {})[name] = rank
    best = sorted(scores, key=lambda p: (-scores[p], best_rank[p], p))[:k]
    return [Fused(p, scores[p] / most if most > 0 else 0.0, signals[p]) for p in best]


def words(text: str) -> set[str]:
    """The content words of ``text``: lower case, stop words out, a few
    English endings cut (the same cut on both sides of a comparison)."""
    found = set()
    for word in re.findall(r"[^\W_]+", text.lower()):
        if word in _STOP:
            continue
        for suffix in _SUFFIXES:
            if word.endswith(suffix) and len(word) - len(suffix) >= 3:
                word = word[: -len(suffix)]
                break
        found.add(word)
    return found


def coverage(query: str, texts: Sequence[str]) -> np.ndarray:
    """For each page text, the share of the query's content words it holds,
    squared ((pages,) in [0, 1]; 0 for a query of stop words only)."""
    wanted = words(query)
    if not wanted:
        return np.zeros(len(texts))
    return np.array([(len(wanted & words(t)) / len(wanted)) ** 2 for t in texts])


def vision_ranking(scores: np.ndarray, depth: int) -> Ranking:
    """Pages by MaxSim (a column of the searcher's (pages, queries) scores;
    pages the candidate stage left out, at -inf, are not ranked)."""
    order = top_k(scores, depth)
    order = order[np.isfinite(scores[order])]
    return Ranking(order, scores[order])


def keyword_ranking(store: IndexStore, catalog: Catalog, query: str, depth: int,
                    notices: list[str] | None = None) -> Ranking:
    """Pages by BM25 over their text (only pages in ``catalog``), each with the
    share of the query's words it holds (its confidence in a fusion); what
    changed about the query (a phrase searched as words) is added to ``notices``."""
    position = {(p.doc_hash, p.page): n for n, p in enumerate(catalog.pages)}
    found = [h for h in store.keyword(query, depth, notices) if (h.doc_hash, h.page) in position]
    return Ranking(np.array([position[(h.doc_hash, h.page)] for h in found], dtype=np.int64),
                   np.array([h.score for h in found]), coverage(query, [h.text for h in found]))


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
