"""Search results: light records, importable without torch or LanceDB."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragged.errors import EmptyQueryError

if TYPE_CHECKING:
    from ragged.embeddings.report import EmbeddingReport


@dataclass(frozen=True)
class SearchHit:
    """One result: a page, its score in the mode searched (MaxSim, cosine,
    BM25, or the fused score), and the rank each signal gave it."""

    path: str
    page: int
    score: float
    doc_hash: str
    signals: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query, with what produced them."""

    query: str
    hits: list[SearchHit]
    model: str
    device: str
    pages_searched: int
    seconds: float
    notices: list[str] = field(default_factory=list)
    mode: str = "vision"
    text_model: str | None = None  # the index's text model (None: it has no text side)
    reports: tuple[EmbeddingReport, ...] = ()  # the models' figures for this search (none: no model needed)
    pages_scored: int | None = None  # pages whose vectors were scored exactly (None: no image search ran)

    @property
    def answered_by(self) -> str:
        """What ranked the pages in this mode: the vision model, the text
        model, the full-text index, or both models."""
        if self.mode == "keyword":
            return "full-text index"
        if self.mode == "text" and self.text_model:
            return self.text_model
        if self.mode == "hybrid" and self.text_model:
            return f"{self.model} + {self.text_model}"
        return self.model

    def to_dict(self) -> dict[str, Any]:
        """Plain data for JSON output."""
        return {
            "query": self.query, "model": self.model, "text_model": self.text_model, "device": self.device,
            "mode": self.mode,
            "pages_searched": self.pages_searched, "pages_scored": self.pages_scored,
            "seconds": round(self.seconds, 3),
            "notices": list(self.notices),
            "hits": [{"rank": n, "path": h.path, "page": h.page, "score": round(h.score, 4), "doc_hash": h.doc_hash,
                      "signals": dict(h.signals)} for n, h in enumerate(self.hits, 1)],
        }


INVALID_UNICODE = ("The query held bytes or characters that are not valid Unicode (lone surrogates); "
                   "they were searched as U+FFFD.")
_SURROGATES = re.compile("[\ud800-\udfff]")


def clean_query(query: str) -> tuple[str, str | None]:
    """(the query to search, a notice or None): stripped, with lone surrogates
    (from JSON's ``"\\ud800"`` or bytes of a command-line argument that are not
    UTF-8) replaced by U+FFFD, which every model and the keyword index take.
    The one policy for the command line, the server and the library; an
    empty query is an error."""
    if not query or not query.strip():
        raise EmptyQueryError("Empty query: give a few words to search for.")
    repaired, count = _SURROGATES.subn("\ufffd", query.strip())
    if count and not repaired.replace("\ufffd", "").strip():
        raise EmptyQueryError("The query holds nothing but bytes that are not valid Unicode: give a few words "
                              "to search for.")
    return repaired, INVALID_UNICODE if count else None


def check_query(query: str) -> str:
    """The query, stripped and repaired (see :func:`clean_query`); an empty one is an error."""
    return clean_query(query)[0]
