"""Where a page's image patches sit among its vectors."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PatchGrid:
    """Where a page's image patches sit among its vectors: ``rows x cols``
    consecutive vectors from ``start``, row by row (for heat-maps)."""

    start: int
    rows: int
    cols: int

    def as_list(self) -> list[int]:
        return [self.start, self.rows, self.cols]


__all__ = ["PatchGrid"]
