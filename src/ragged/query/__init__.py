"""Answering questions: modes, fusion, the query engine and ``Searcher``.

Above both the index (pages, vectors, MaxSim search) and the models (the
vision and text embedders): this package embeds a query with the models the
mode needs, ranks the index's pages by each signal and fuses the rankings.
The command line, the server and library users all answer through
:class:`~ragged.query.engine.QueryEngine`.

Names are imported on first use (torch and LanceDB are heavy).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragged.query.engine import QueryAnswer, QueryEngine
    from ragged.query.modes import Mode, parse_mode
    from ragged.query.searcher import Searcher, check_model, search

_WHERE = {
    "Mode": "modes",
    "QueryAnswer": "engine",
    "QueryEngine": "engine",
    "Searcher": "searcher",
    "check_model": "searcher",
    "parse_mode": "modes",
    "search": "searcher",
}

__all__ = [
    "Mode",
    "QueryAnswer",
    "QueryEngine",
    "Searcher",
    "check_model",
    "parse_mode",
    "search",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ragged.query' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ragged.query.{_WHERE[name]}"), name)
