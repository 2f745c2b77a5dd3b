"""Answering queries in any mode: the one place the CLI and the server share.

Each model is used only by the modes that need it (keyword search needs
none; text mode never loads the vision model), and every query of a batch
goes through each model and through the page vectors once.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.policy import MemoryPolicy
from ragged.index.fusion import Ranking, fuse
from ragged.index.maxsim import maxsim_scores
from ragged.index.results import SearchHit
from ragged.index.retrieval import (
    Mode,
    TextVectors,
    depth_for,
    hits,
    keyword_ranking,
    single,
    vision_ranking,
)
from ragged.index.search import MaxSimSearcher, VectorSource
from ragged.index.store import IndexStore
from ragged.index.weights import SignalWeights, index_weights
from ragged.text.embedder import TextEmbedder


@dataclass
class QueryEngine:
    """The index's vectors and models, ready to answer in every mode.

    ``vision`` and ``text`` are called when a mode first needs them (so a
    model is loaded only when used)."""

    store: IndexStore
    source: VectorSource
    vision: Callable[[], ColPaliEmbedder]
    text: Callable[[], TextEmbedder] | None
    device_manager: DeviceManager
    policy: MemoryPolicy
    oom_handler: OOMHandler
    _text_vectors: TextVectors | None = None
    _weights: SignalWeights | None = None
    notices: list[str] = field(default_factory=list)  # the last answer's (a query cut to a model's length)

    def refresh(self, store: IndexStore) -> None:
        """Answer from ``store`` (reopened after new commits): its passage
        vectors are read again when next needed."""
        self.store = store
        self._text_vectors = None

    def _passages(self) -> TextVectors:
        if self._text_vectors is None:
            self._text_vectors = TextVectors.load(self.store)
        return self._text_vectors

    def weights(self) -> SignalWeights:
        """Each signal's weight in hybrid fusion, learned from this index once
        (:mod:`ragged.index.weights`)."""
        if self._weights is None:
            self._weights = index_weights(self.store, self.source.catalog, self._vision_scores,
                                          self._text_scores if self.text is not None else None)
        return self._weights

    def _vision_scores(self, queries: list[str], positions: list[int]) -> np.ndarray:
        pages = self.source.catalog.pages
        vectors = [np.asarray(self.store.page_vectors(pages[p].doc_hash, pages[p].page)) for p in positions]
        return maxsim_scores(self.vision().embed_queries(queries), vectors)  # (queries, pages)

    def _text_scores(self, queries: list[str], positions: list[int]) -> np.ndarray:
        assert self.text is not None
        return self._passages().best_of(self.text().embed_queries(queries), positions)  # (queries, pages)

    def answer(self, queries: list[str], k: int, mode: Mode) -> list[list[SearchHit]]:
        """The ``k`` best pages for each query."""
        catalog = self.source.catalog
        depth = depth_for(k) if mode is Mode.HYBRID else k
        per_query: list[dict[str, Ranking]] = [{} for _ in queries]
        self.notices = []
        if mode in (Mode.VISION, Mode.HYBRID):
            embedder = self.vision()
            vectors = embedder.embed_queries(queries)
            self.notices.extend(embedder.last_query_notices)
            searcher = MaxSimSearcher(self.source, embedder.device, self.device_manager, policy=self.policy,
                                      oom_handler=self.oom_handler)
            scores = searcher.score_all(vectors)  # (pages, queries)
            for i in range(len(queries)):
                per_query[i][Mode.VISION.value] = vision_ranking(scores[:, i], depth)
        if mode in (Mode.TEXT, Mode.HYBRID) and self.text is not None:
            text_model = self.text()
            text_vectors = text_model.embed_queries(queries)  # (queries, dim)
            self.notices.extend(text_model.last_query_notices)
            passages = self._passages()
            for i in range(len(queries)):
                per_query[i][Mode.TEXT.value] = passages.rank(text_vectors[i], depth)
        if mode in (Mode.KEYWORD, Mode.HYBRID):
            for i, query in enumerate(queries):
                per_query[i][Mode.KEYWORD.value] = keyword_ranking(self.store, catalog, query, depth)
        weights = self.weights() if mode is Mode.HYBRID else SignalWeights()  # after the queries' own model work
        self.notices.extend(weights.notices())
        out = []
        for rankings in per_query:
            if mode is Mode.HYBRID:
                out.append(hits(catalog, fuse(rankings, k, weights)))
            else:
                ranking = rankings.get(mode.value, Ranking(np.zeros(0, dtype=np.int64), np.zeros(0)))
                out.append(hits(catalog, single(mode.value, ranking, k)))
        return out
