"""Page text cut into passages that fit the text model, with overlap.

A page's text is tokenised once; windows of at most ``max_tokens`` tokens
(the model's limit less its two special tokens) step by ``max_tokens -
overlap``, so a sentence cut by one window's end is whole in the next. A
page's text score is its best passage's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

OVERLAP_TOKENS = 32


@dataclass(frozen=True)
class Passage:
    """One window of a page's text: its token ids (no special tokens) and text."""

    ids: list[int]
    text: str


def split_passages(tokenizer: Any, text: str, max_tokens: int, overlap: int = OVERLAP_TOKENS) -> list[Passage]:
    """``text`` as passages of at most ``max_tokens - 2`` tokens, overlapping by ``overlap``."""
    if not text or not text.strip():
        return []
    ids: list[int] = tokenizer(text, add_special_tokens=False)["input_ids"]
    width = max(8, max_tokens - 2)
    step = max(1, width - min(overlap, width // 2))
    passages = []
    for start in range(0, len(ids), step):  # the last window reaches the end: see the break
        window = ids[start : start + width]
        if not window:
            break
        passages.append(Passage(window, str(tokenizer.decode(window)).strip()))
        if start + width >= len(ids):
            break
    return passages
