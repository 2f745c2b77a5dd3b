"""The passage vectors of the text side, ranked against a query vector."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragged.index.catalog import Catalog
from ragged.index.search import top_k
from ragged.index.store import IndexStore
from ragged.query.fusion import Ranking


@dataclass
class TextVectors:
    """Every passage vector and the position of its page in ``catalog``
    (numbered against that catalog: an answer ranks and reports its hits
    from the same snapshot)."""

    owners: np.ndarray  # (passages,) int64
    vectors: np.ndarray  # (passages, dim) float32
    catalog: Catalog

    @classmethod
    def load(cls, store: IndexStore, catalog: Catalog) -> TextVectors:
        """The passage vectors of the pages in ``catalog``."""
        owners, vectors = store.text_vectors(catalog)
        return cls(owners, vectors, catalog)

    def rank(self, query: np.ndarray, depth: int) -> Ranking:
        """Pages by their best passage's cosine with ``query`` ((dim,), normalised)."""
        if not len(self.owners):
            return Ranking(np.zeros(0, dtype=np.int64), np.zeros(0))
        sims = self.vectors @ np.asarray(query, dtype=np.float32)  # (passages,)
        best = np.full(len(self.catalog.pages), -np.inf, dtype=np.float32)
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


__all__ = ["TextVectors"]
