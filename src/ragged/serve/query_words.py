"""The words of a query, as the vision model's tokens cut them.

A tokenizer cuts "Question: quarterly revenue" into pieces ("Que", "s",
"t", "ion", ":", "Ġqu", "arter", "ly", ...) and the processor wraps the
query in a prompt and padding. A heat-map is read by the words the user
typed: each token is placed in the decoded text (by decoding the ids up to
it), the user's query is found after the processor's prompt, and each of
its whitespace-separated words collects the tokens that overlap it. The
prompt, special tokens and the trailing newline belong to no word.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ragged.embeddings.colpali_embedder import ColPaliEmbedder


@dataclass(frozen=True)
class QueryWord:
    """A word of the query and the positions of its tokens among the query's vectors."""

    text: str
    tokens: tuple[int, ...]


def query_words(ids: Sequence[int], special: Collection[int], decode: Callable[[Sequence[int]], str], query: str,
                prefix: str = "") -> list[QueryWord]:
    """The words of ``query`` and their tokens among ``ids`` (the model's
    input for it; ``decode`` turns ids back into text, special tokens kept).
    Where the query cannot be found in the decoded text, every token that is
    not special stands for itself."""
    ends = [len(decode(ids[: i + 1])) for i in range(len(ids))]
    full = decode(ids)
    at = _locate(full, query.strip(), prefix)
    if at is None or any(b < a for a, b in pairwise(ends)):
        return [QueryWord(piece, (i,)) for i, piece in enumerate(_pieces(ids, decode)) if ids[i] not in special
                and piece]
    words = [(m.start() + at, m.end() + at, m.group()) for m in re.finditer(r"\S+", full[at : at + len(query.strip())])]
    groups: list[list[int]] = [[] for _ in words]
    for i, (start, end) in enumerate(zip([0, *ends[:-1]], ends, strict=True)):
        if ids[i] in special:
            continue
        for n, (word_start, word_end, _) in enumerate(words):
            if start < word_end and end > word_start:
                groups[n].append(i)
                break
    return [QueryWord(text, tuple(group)) for (_, _, text), group in zip(words, groups, strict=True) if group]


def _locate(full: str, query: str, prefix: str) -> int | None:
    """Where ``query`` starts in ``full``: after the prompt, as typed or in another case."""
    after = full.find(prefix) + len(prefix) if prefix and prefix in full else 0
    for haystack, needle in ((full, query), (full.lower(), query.lower())):
        found = haystack.find(needle, after)
        if found >= 0:
            return found
    return after if prefix and prefix in full else None  # cut or normalised: it starts after the prompt


def _pieces(ids: Sequence[int], decode: Callable[[Sequence[int]], str]) -> list[str]:
    return [decode([i]).strip() for i in ids]


def words_of(embedder: ColPaliEmbedder, query: str, vectors: int) -> list[QueryWord]:
    """The words of ``query`` among the ``vectors`` query vectors ``embedder``
    gave for it (none when its tokens do not line up with them)."""
    tokens, special = embedder.query_tokens(query)
    if len(tokens) != vectors:
        return []
    tokenizer = embedder.processor.tokenizer
    ids = [int(i) for i in tokenizer.convert_tokens_to_ids(tokens)]
    special_ids = {int(i) for i in tokenizer.convert_tokens_to_ids(sorted(special))}

    def decode(part: Sequence[int]) -> str:
        return str(tokenizer.decode(list(part), skip_special_tokens=False, clean_up_tokenization_spaces=False))

    return query_words(ids, special_ids, decode, query, str(getattr(embedder.processor, "query_prefix", "") or ""))
