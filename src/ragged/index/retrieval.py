"""Search modes over dual storage, and how their rankings are fused.

==========  ==================================================================
mode        ranks pages by
==========  ==================================================================
vision      exact MaxSim of the query's multi-vector against each page image
text        cosine of the query's text vector with each page's best passage
keyword     BM25 over page text (LanceDB's full-text index)
hybrid      the three fused, each heard as far as it knows something
==========  ==================================================================

How the rankings are fused is in :mod:`ragged.index.fusion`; each ranking
contributes its first ``depth`` pages.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from ragged.errors import ConfigurationError
from ragged.index.catalog import Catalog
from ragged.index.fusion import Fused, Ranking, coverage
from ragged.index.results import SearchHit
from ragged.index.search import top_k
from ragged.index.store import IndexStore

MIN_DEPTH = 100  # each ranking contributes at least this many pages to a fusion


class Mode(StrEnum):
    """How to search."""

    VISION = "vision"
    TEXT = "text"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


def parse_mode(value: str | Mode | None, has_text: bool) -> Mode:
    """The mode asked for; by default hybrid where the index has text, else vision."""
    if value is None or value == "auto":
        return Mode.HYBRID if has_text else Mode.VISION
    try:
        mode = Mode(value)
    except ValueError:
        raise ConfigurationError(f"Unknown mode {value!r}: use auto, vision, text, keyword or hybrid.") from None
    if mode is not Mode.VISION and not has_text:
        raise ConfigurationError(f"Mode {mode.value} needs page text, and this index has none: search it in "
                                 "vision mode, or run 'ragged ingest' again to add the text side.")
    return mode


@dataclass
class TextVectors:
    """Every passage vector and the catalog position of its page."""

    owners: np.ndarray  # (passages,) int64
    vectors: np.ndarray  # (passages, dim) float32
    pages: int = 0

    @classmethod
    def load(cls, store: IndexStore) -> TextVectors:
        owners, vectors = store.text_vectors()
        return cls(owners, vectors, len(store.catalog().pages))

    def rank(self, query: np.ndarray, depth: int) -> Ranking:
        """Pages by their best passage's cosine with ``query`` ((dim,), normalised)."""
        if not len(self.owners):
            return Ranking(np.zeros(0, dtype=np.int64), np.zeros(0))
        sims = self.vectors @ np.asarray(query, dtype=np.float32)  # (passages,)
        best = np.full(self.pages, -np.inf, dtype=np.float32)
        np.maximum.at(best, self.owners, sims)
        found = np.flatnonzero(best > -np.inf)
        order = found[top_k(best[found], depth)]
        return Ranking(order, best[order])

    def best_of(self, queries: np.ndarray, positions: Sequence[int]) -> np.ndarray:
        """Each query's cosine with the best passage of each page at
        ``positions`` ((queries, pages); -inf for a page without passages)."""
        out = np.full((len(queries), len(positions)), -np.inf, dtype=np.float32)
        for j, position in enumerate(positions):
            mine = self.vectors[self.owners == position]  # (passages, dim)
            if len(mine):
                out[:, j] = (np.asarray(queries, dtype=np.float32) @ mine.T).max(axis=1)  # (queries,)
        return out


def vision_ranking(scores: np.ndarray, depth: int) -> Ranking:
    """Pages by MaxSim (a column of the searcher's (pages, queries) scores)."""
    order = top_k(scores, depth)
    return Ranking(order, scores[order])


def keyword_ranking(store: IndexStore, catalog: Catalog, query: str, depth: int) -> Ranking:
    """Pages by BM25 over their text (only pages in ``catalog``), each with the
    share of the query's words it holds (its confidence in a fusion)."""
    position = {(p.doc_hash, p.page): n for n, p in enumerate(catalog.pages)}
    found = [h for h in store.keyword(query, depth) if (h.doc_hash, h.page) in position]
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
