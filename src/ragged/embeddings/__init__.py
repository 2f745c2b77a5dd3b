"""Page and query embeddings with ColPali-family models."""

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.loading import DEFAULT_MODEL, ModelSource, resolve_model
from ragged.embeddings.presets import PRESETS, ensure_preset
from ragged.embeddings.report import EmbeddingReport

__all__ = ["DEFAULT_MODEL", "PRESETS", "ColPaliEmbedder", "EmbeddingReport", "ModelSource", "ensure_preset",
           "resolve_model"]
