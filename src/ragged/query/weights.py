"""Each signal's weight in hybrid fusion, learned from the index itself.

A few of the index's pages are asked for by a run of their own words
(probes). A signal that does not put a page first for its own words is not
listening to the query: its weight is its mean reciprocal rank of the
probed page among the probed pages, less what chance gives, scaled to
[0, 1]. A random-weight vision preset scores about 0; a real ColPali or
text model, which read these words on the page, close to 1. Keyword search
finds copied words by construction, so it is not probed (its hits are
weighed one by one instead: :func:`ragged.query.fusion.coverage`).

The weights are kept under the index (``.cache/fusion-weights.json``), keyed
by the models and the probes, so a command that searches once does not
learn them again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from loguru import logger

from ragged.index.catalog import Catalog
from ragged.index.files import atomic_write
from ragged.index.store import IndexStore

PROBES = 24  # pages probed by their own words to weigh a signal
MIN_PROBES = 4  # below this the weights stay at 1 (not enough evidence either way)
PROBE_WORDS = 8
QUIET_WEIGHT = 0.5  # a signal weighed below this is named in a notice
CACHE = "fusion-weights.json"  # under the index's .cache folder


@dataclass(frozen=True)
class SignalWeights:
    """How far each ranking is heard in a fusion (0: not at all, 1: fully)."""

    vision: float = 1.0
    text: float = 1.0
    keyword: float = 1.0
    probes: int = 0  # pages the weights were learned on; 0: not learned (all 1)

    def of(self, signal: str) -> float:
        """The weight of ``signal`` (1 for a signal it does not know)."""
        return float(getattr(self, signal, 1.0))

    def notices(self) -> list[str]:
        """A line for each signal that is hardly heard, saying why."""
        return [f"The {name} ranking counts for {value:.2f} of its weight in hybrid search: on this index it does "
                f"not find pages by their own words (see docs/guides/search-modes.md)."
                for name, value in (("image", self.vision), ("text", self.text)) if value < QUIET_WEIGHT]


@dataclass(frozen=True)
class Probe:
    """A page and a run of its own words."""

    position: int  # in the catalog
    query: str


def probes(texts: Sequence[tuple[int, str]], count: int = PROBES) -> list[Probe]:
    """Up to ``count`` probes from (catalog position, page text) pairs, spread
    evenly: ``PROBE_WORDS`` words from a third of the way into the page;
    pages with fewer than ``PROBE_WORDS + 4`` words are skipped."""
    usable = [(p, t.split()) for p, t in texts if len(t.split()) >= PROBE_WORDS + 4]
    step = max(1, len(usable) // count)
    chosen = usable[::step][:count]
    return [Probe(p, " ".join(w[min(len(w) // 3, len(w) - PROBE_WORDS):][:PROBE_WORDS])) for p, w in chosen]


def listening(scores: np.ndarray) -> float:
    """How far a signal finds each probed page by its own words: ``scores``
    ((probes, probes), probe i's own page in column i), as the mean
    reciprocal rank above chance, in [0, 1]."""
    n = scores.shape[0]
    own = np.diag(scores)[:, None]  # (probes, 1)
    ties = (scores == own).sum(axis=1) - 1  # other pages scored exactly as the probed one
    ranks = 1 + (scores > own).sum(axis=1) + ties / 2  # a tie is a coin toss, not a win
    mrr = float(np.mean(1.0 / ranks))
    chance = float(np.mean(1.0 / np.arange(1, n + 1)))
    return float(np.clip((mrr - chance) / (1 - chance), 0.0, 1.0))


Scorer = Callable[[list[str], list[int]], np.ndarray]  # (queries, catalog positions) -> (queries, positions)


def learn_weights(found: list[Probe], vision: Scorer | None, text: Scorer | None) -> SignalWeights:
    """Each signal's weight from how it ranks the probed pages for their own words."""
    if len(found) < MIN_PROBES:
        return SignalWeights()
    queries, positions = [p.query for p in found], [p.position for p in found]
    weigh = {name: listening(scorer(queries, positions)) for name, scorer in (("vision", vision), ("text", text))
             if scorer is not None}
    return SignalWeights(vision=weigh.get("vision", 1.0), text=weigh.get("text", 1.0), probes=len(found))


def cached_weights(cache_dir: Path, key: dict[str, object], learn: Callable[[], SignalWeights]) -> SignalWeights:
    """The weights stored under ``cache_dir`` for ``key``, else learned and
    stored (a folder that cannot be written only means learning again)."""
    path = cache_dir / CACHE
    try:
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return SignalWeights(**stored["weights"])
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        pass
    weights = learn()
    try:
        data = json.dumps({"key": key, "weights": asdict(weights)}).encode()
        atomic_write(path, lambda fh: fh.write(data))
    except Exception as exc:  # a read-only index is searched all the same
        logger.debug("Fusion weights not cached: {}", exc)
    return weights


def index_weights(store: IndexStore, catalog: Catalog, vision: Scorer | None, text: Scorer | None) -> SignalWeights:
    """The weights of ``store``'s signals (``vision``, ``text``: their scorers),
    from the cache under the index when the models and probes are the same."""
    position = {(p.doc_hash, p.page): n for n, p in enumerate(catalog.pages)}
    texts = [(position[(d, p)], t) for d, p, t in store.probe_texts(PROBES * 8) if (d, p) in position]
    found = probes(texts)
    meta = store.meta
    key: dict[str, object] = {"vision": meta.model if meta else None, "text": meta.text_model if meta else None,
                              "probes": [p.query for p in found]}
    weights = cached_weights(store.folder / ".cache", key, lambda: learn_weights(found, vision, text))
    logger.debug("Fusion weights: {}", weights)
    return weights
