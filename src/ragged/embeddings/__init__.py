"""Page and query embeddings with ColPali-family models.

Attributes are imported on first use, so that light callers (the CLI's
``--help``, model-name checks) do not pay for torch and transformers.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragged.embeddings.colpali_embedder import ColPaliEmbedder
    from ragged.embeddings.loading import ModelSource, resolve_model
    from ragged.embeddings.names import DEFAULT_MODEL, PRESETS
    from ragged.embeddings.presets import ensure_preset
    from ragged.embeddings.report import EmbeddingReport

_WHERE = {
    "ColPaliEmbedder": "ragged.embeddings.colpali_embedder",
    "DEFAULT_MODEL": "ragged.embeddings.names",
    "PRESETS": "ragged.embeddings.names",
    "EmbeddingReport": "ragged.embeddings.report",
    "ModelSource": "ragged.embeddings.loading",
    "resolve_model": "ragged.embeddings.loading",
    "ensure_preset": "ragged.embeddings.presets",
}

__all__ = ["DEFAULT_MODEL", "PRESETS", "ColPaliEmbedder", "EmbeddingReport", "ModelSource", "ensure_preset",
           "resolve_model"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ragged.embeddings' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
