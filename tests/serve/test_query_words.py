"""Heat-map words: sub-word pieces grouped into the words the user typed,
the processor's prompt and padding left out, for every tiny family."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragged.embeddings import ColPaliEmbedder
from ragged.index.catalog import PatchGrid
from ragged.serve.heatmap import heatmap
from ragged.serve.query_words import QueryWord, query_words, words_of


@pytest.fixture(scope="module", params=["tiny-colpali", "tiny-colqwen2", "tiny-colmodernvbert"])
def embedder(request: pytest.FixtureRequest, model_cache: Path) -> Iterator[ColPaliEmbedder]:
    with ColPaliEmbedder(request.param, device="cpu", cache_dir=model_cache) as loaded:
        yield loaded


@pytest.mark.parametrize(("query", "expected"), [
    ("quarterly revenue", ["quarterly", "revenue"]),
    ("what's the rent, in EUR?", ["what's", "the", "rent,", "in", "EUR?"]),
    ("  Hollow   Hill ", ["Hollow", "Hill"]),
])
def test_the_words_are_the_ones_typed_and_hold_every_piece(embedder: ColPaliEmbedder, query: str,
                                                            expected: list[str]) -> None:
    vectors = embedder.embed_queries([query])[0]
    tokens, special = embedder.query_tokens(query)
    words = words_of(embedder, query, len(vectors))
    assert [w.text for w in words] == expected  # no prompt ("Question:", "Query:"), no padding, no newline
    pieces = [[tokens[i] for i in w.tokens] for w in words]
    assert all(len(p) >= 1 and not set(p) & special for p in pieces)
    assert sum(len(p) for p in pieces) < len(tokens)  # the prompt's and padding's tokens belong to no word


def decode_pieces(table: dict[int, str]):  # type: ignore[no-untyped-def]
    """A SentencePiece-like decode: '▁' is a space, dropped at the very start."""
    return lambda ids: "".join(table[i] for i in ids).replace("▁", " ").lstrip(" ")


def test_sentencepiece_spaces_and_a_prompt_with_the_query_s_word() -> None:
    table = {0: "<bos>", 1: "Question", 2: ":", 3: "▁Question", 4: "s", 5: "▁about", 6: "<pad>", 7: "\n"}
    words = query_words([0, 1, 2, 3, 4, 5, 6, 6, 7], {0, 6}, decode_pieces(table), "Questions about",
                        prefix="Question: ")
    assert words == [QueryWord("Questions", (3, 4)), QueryWord("about", (5,))]


def test_a_query_not_found_falls_back_to_its_pieces() -> None:
    table = {0: "<s>", 1: "ab", 2: "▁cd"}
    words = query_words([0, 1, 2], {0}, decode_pieces(table), "something else")
    assert [w.text for w in words] == ["ab", "cd"] and [w.tokens for w in words] == [(1,), (2,)]


def test_word_maps_combine_their_tokens_and_the_overall_map_ignores_the_prompt() -> None:
    page = np.eye(4, dtype=np.float32)  # 4 patches, one-hot
    query = np.array([[0, 0, 0, 1], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]], dtype=np.float32)  # prompt first
    result = heatmap(query, [QueryWord("ab", (1, 2)), QueryWord("c", (3,))], page, PatchGrid(0, 2, 2))
    assert [w.text for w in result.words] == ["ab", "c"]
    assert result.words[0].values == [1.0, 1.0, 0.0, 0.0] and result.words[0].best == pytest.approx(2.0)
    assert result.words[1].values == [0.0, 0.0, 1.0, 0.0]
    assert result.overall[3] == 0.0  # the prompt's patch is not drawn
