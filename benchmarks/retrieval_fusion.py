"""Fusion variants, replayed on the single modes' rankings of one corpus.

The benchmark keeps every single mode's full ranking with its scores; this
fuses them again with ragged's own ``fuse`` under other settings, so the
choice of K and of weights is measured on each corpus, not assumed:

* ``learned``: the weights the index's probes gave (what hybrid uses);
* ``all 1``: every ranking heard alike (reciprocal rank fusion's premise);
* ``listening image``: the text ranking standing in for an image ranking
  that knows something, every weight 1: fusion must not lose what a
  second good ranking brings.
"""

from __future__ import annotations

import numpy as np

from benchmarks.retrieval_corpus import Query
from ragged.query.fusion import Ranking, coverage, fuse
from ragged.query.weights import SignalWeights

Key = tuple[str, int]
Scored = dict[str, dict[Query, list[tuple[Key, float]]]]  # mode -> query -> (page, score), best first
CONSTANTS = (2, 10, 60)


def _rankings(scored: Scored, query: Query, where: dict[Key, int], text: dict[Key, str]) -> dict[str, Ranking]:
    out = {}
    for mode in ("vision", "text", "keyword"):
        found = scored[mode][query]
        positions = np.array([where[key] for key, _ in found], dtype=np.int64)
        scores = np.array([score for _, score in found])
        sure = coverage(query.text, [text[key] for key, _ in found]) if mode == "keyword" else None
        out[mode] = Ranking(positions, scores, sure)
    return out


def variants(name: str, scored: Scored, documents: dict[str, list[list[str]]], queries: list[Query],
             learned: SignalWeights) -> list[tuple[object, ...]]:
    """(corpus, K, variant, recall@1, MRR) for each K and variant."""
    text = {(doc, n): " ".join(lines) for doc, pages in documents.items() for n, lines in enumerate(pages, 1)}
    keys = sorted(text)
    where = {key: n for n, key in enumerate(keys)}
    rows: list[tuple[object, ...]] = []
    for constant in CONSTANTS:
        for label, weights, image in (("learned", learned, "vision"), ("all 1", SignalWeights(), "vision"),
                                      ("listening image", SignalWeights(), "text")):
            ranks = []
            for query in queries:
                rankings = _rankings(scored, query, where, text)
                rankings["vision"] = rankings[image]
                order = [keys[f.position] for f in fuse(rankings, len(keys), weights, constant)]
                right = (query.document, query.page)
                ranks.append(order.index(right) + 1 if right in order else None)
            rows.append((name, constant, label, f"{sum(r == 1 for r in ranks) / len(ranks):.3f}",
                         f"{sum(1 / r for r in ranks if r) / len(ranks):.3f}"))
    return rows
