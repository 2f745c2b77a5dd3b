"""The text side of dual storage: page text, passages, a sentence-embedding model.

Attributes are imported on first use (torch and transformers are heavy)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragged.text.embedder import TextEmbedder
    from ragged.text.model import DEFAULT_TEXT_MODEL, TextModelSource, resolve_text_model
    from ragged.text.passages import Passage, split_passages

_WHERE = {
    "TextEmbedder": "ragged.text.embedder",
    "DEFAULT_TEXT_MODEL": "ragged.text.model",
    "TextModelSource": "ragged.text.model",
    "resolve_text_model": "ragged.text.model",
    "Passage": "ragged.text.passages",
    "split_passages": "ragged.text.passages",
}

__all__ = ["DEFAULT_TEXT_MODEL", "Passage", "TextEmbedder", "TextModelSource", "resolve_text_model",
           "split_passages"]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ragged.text' has no attribute {name!r}")
    return getattr(importlib.import_module(_WHERE[name]), name)
