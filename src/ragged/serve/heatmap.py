"""MaxSim heat-maps: which patches of a page matched which words of the query.

Each query token's similarity with every image patch of the page (the
page's patch grid, recorded at ingest) is a map; MaxSim scores the page by
each token's best patch. A word's map is the mean of its tokens' maps
(:mod:`ragged.serve.query_words` groups the tokens), scaled to [0, 1]; its
``best`` is its tokens' share of the page's MaxSim score. The overall map is
the mean of the words' maps, scaled to [0, 1] again, the way ColPali's
interpretability plots show them. The prompt and padding tokens score the
page too, but belong to no word, so they are not drawn.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ragged.multivector.grid import PatchGrid
from ragged.serve.query_words import QueryWord


@dataclass(frozen=True)
class WordMap:
    """One word of the query and its map (rows x cols values in [0, 1], row by row)."""

    text: str
    best: float  # its MaxSim contribution: its tokens' best similarities over the page's patches, summed
    values: list[float]


@dataclass(frozen=True)
class Heatmap:
    """The maps of one query over one page."""

    rows: int
    cols: int
    overall: list[float]
    words: list[WordMap]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def heatmap(query: np.ndarray, words: list[QueryWord], page: np.ndarray, grid: PatchGrid) -> Heatmap:
    """The heat-map of ``query`` ((qt, dim), one row per token) over the
    patches of ``page`` ((n, dim)), word by word."""
    patches = np.asarray(page[grid.start : grid.start + grid.rows * grid.cols], dtype=np.float32)  # (p, dim)
    sims = np.asarray(query, dtype=np.float32) @ patches.T  # (qt, p)
    groups = [list(w.tokens) for w in words] or [[i] for i in range(len(sims))]
    texts = [w.text for w in words] or [f"#{i}" for i in range(len(sims))]
    scaled = [_scaled(sims[g].mean(axis=0)) for g in groups]  # each (p,) in [0, 1]
    overall = _scaled(np.mean(scaled, axis=0))  # full contrast
    maps = [WordMap(text, float(sims[g].max(axis=1).sum()), _rounded(values))
            for text, g, values in zip(texts, groups, scaled, strict=True)]
    return Heatmap(grid.rows, grid.cols, _rounded(overall), maps)


def _scaled(values: np.ndarray) -> np.ndarray:
    low = float(values.min())
    return (values - low) / max(float(values.max()) - low, 1e-6)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]
