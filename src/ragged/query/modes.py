"""Search modes: what ranks the pages. Light: imports nothing heavy.

==========  ==================================================================
mode        ranks pages by
==========  ==================================================================
vision      exact MaxSim of the query's multi-vector against each page image
text        cosine of the query's text vector with each page's best passage
keyword     BM25 over page text (LanceDB's full-text index)
hybrid      the three fused (:mod:`ragged.query.fusion`)
auto        hybrid where the index has a text side, else vision
==========  ==================================================================
"""

from __future__ import annotations

from enum import StrEnum

from ragged.errors import ConfigurationError

AUTO = "auto"


class Mode(StrEnum):
    """How to search."""

    VISION = "vision"
    TEXT = "text"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


MODE_NAMES = (AUTO, *(m.value for m in Mode))  # what a user may ask for


def parse_mode(value: str | Mode | None, has_text: bool) -> Mode:
    """The mode asked for; ``auto`` (or nothing) is hybrid where the index has text, else vision."""
    if value is None or value == AUTO:
        return Mode.HYBRID if has_text else Mode.VISION
    try:
        mode = Mode(value)
    except ValueError:
        choices = f"{', '.join(MODE_NAMES[:-1])} or {MODE_NAMES[-1]}"
        raise ConfigurationError(f"Unknown mode {value!r}: use {choices}.") from None
    if mode is not Mode.VISION and not has_text:
        raise ConfigurationError(f"Mode {mode.value} needs page text, and this index has none: search it in "
                                 "vision mode, or run 'ragged ingest' again to add the text side.")
    return mode


__all__ = ["AUTO", "MODE_NAMES", "Mode", "parse_mode"]
