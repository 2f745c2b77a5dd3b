"""The pure core of batch sizing: the largest batch a budget allows.

Shared by the adaptive sizer and the spec's ``calculate_batch_size``
(:mod:`ragged.gpu.compat`); no state, no readings.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from ragged.errors import ConfigurationError

if TYPE_CHECKING:
    from ragged.gpu.batch_sizer import BatchSizeConfig


def plan_batch_size(
    *,
    budget_bytes: int,
    base_bytes: float,
    bytes_per_load: float,
    load_per_item: float,
    config: BatchSizeConfig,
    ceiling: int | None = None,
) -> int:
    """The largest batch whose predicted peak fits the budget, clamped.

    ``bytes_per_load`` must be positive: a cost that is not known is the
    prior's to fill in, never "free"."""
    if bytes_per_load <= 0:
        raise ConfigurationError(f"bytes_per_load must be positive, got {bytes_per_load}.")
    upper = config.max_batch_size if ceiling is None else min(config.max_batch_size, ceiling)
    upper = max(config.min_batch_size, upper)
    per_item = bytes_per_load * max(load_per_item, 1e-9)
    fits = math.floor((budget_bytes - base_bytes) / per_item)
    return max(config.min_batch_size, min(upper, fits))


__all__ = ["plan_batch_size"]
