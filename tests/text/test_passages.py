"""Passage windows: every token of a page is in some passage, whatever the model's length."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from ragged.text.passages import split_passages


class Words:
    """A tokenizer stand-in: one token per word, ids are the word numbers."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, Any]:
        return {"input_ids": [int(w) for w in text.split()]}

    def decode(self, ids: list[int]) -> str:
        return " ".join(map(str, ids))


@pytest.mark.parametrize("max_tokens", [10, 16, 40, 66, 128, 256])
@pytest.mark.parametrize("words", [1, 7, 63, 100, 1000])
def test_windows_cover_every_token_and_overlap(max_tokens: int, words: int) -> None:
    ids = list(range(words))
    passages = split_passages(Words(), " ".join(map(str, ids)), max_tokens)
    width = max(8, max_tokens - 2)
    assert all(len(p.ids) <= width for p in passages)
    covered = sorted({i for p in passages for i in p.ids})
    assert covered == ids  # the end of a long text is never dropped
    assert passages[0].ids[0] == 0 and passages[-1].ids[-1] == words - 1
    for a, b in itertools.pairwise(passages):
        assert b.ids[0] < a.ids[-1] + 1  # consecutive windows overlap: a sentence cut in one is whole in the next


def test_blank_text_has_no_passages() -> None:
    assert split_passages(Words(), "  \n ", 256) == []
