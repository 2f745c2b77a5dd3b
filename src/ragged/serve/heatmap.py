"""MaxSim heat-maps: which patches of a page matched which query tokens.

For each query token, its similarity with every image patch of the page
(the page's patch grid, recorded at ingest) is a map; MaxSim scores the
page by each token's best patch. Maps are scaled to [0, 1] per token; the
overall map is their mean over the query's own tokens (special tokens left
out) scaled to [0, 1] again, the way ColPali's interpretability plots show
them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ragged.multivector.grid import PatchGrid


@dataclass(frozen=True)
class TokenMap:
    """One query token and its map (rows x cols values in [0, 1], row by row)."""

    text: str
    best: float  # its MaxSim contribution: the best similarity over the page's patches
    values: list[float]


@dataclass(frozen=True)
class Heatmap:
    """The maps of one query over one page."""

    rows: int
    cols: int
    overall: list[float]
    tokens: list[TokenMap]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def heatmap(query: np.ndarray, tokens: list[str], special: set[str], page: np.ndarray,
            grid: PatchGrid) -> Heatmap:
    """The heat-map of ``query`` ((qt, dim), one row per token of ``tokens``)
    over the patches of ``page`` ((n, dim))."""
    patches = np.asarray(page[grid.start : grid.start + grid.rows * grid.cols], dtype=np.float32)  # (p, dim)
    sims = np.asarray(query, dtype=np.float32) @ patches.T  # (qt, p)
    low = sims.min(axis=1, keepdims=True)
    span = np.maximum(sims.max(axis=1, keepdims=True) - low, 1e-6)
    scaled = (sims - low) / span  # (qt, p) in [0, 1]
    content = [i for i, t in enumerate(tokens) if t not in special] or list(range(len(tokens)))
    mean = scaled[content].mean(axis=0)  # (p,)
    overall = (mean - mean.min()) / max(float(mean.max() - mean.min()), 1e-6)  # full contrast
    maps = [TokenMap(tokens[i], float(sims[i].max()), _rounded(scaled[i])) for i in content]
    return Heatmap(grid.rows, grid.cols, _rounded(overall), maps)


def _rounded(values: np.ndarray) -> list[float]:
    return [round(float(v), 3) for v in values]
