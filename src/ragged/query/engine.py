"""Answering queries in any mode: the one place the CLI, the library and the server share.

Each model is used only by the modes that need it (keyword search needs
none; text mode never loads the vision model), and every query of a batch
goes through each model and through the page vectors once. An answer is a
value (:class:`QueryAnswer`: hits, notices, the models' reports), and it is
built from one catalog snapshot in every mode, so a commit that lands
meanwhile can never number one signal's pages differently from another's.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.report import EmbeddingReport
from ragged.gpu.runtime import Runtime
from ragged.index.catalog import Catalog
from ragged.index.results import SearchHit
from ragged.index.search import Block, MaxSimSearcher, VectorSource
from ragged.index.store import IndexStore
from ragged.multivector.maxsim import maxsim_scores
from ragged.query.fusion import Ranking, depth_for, fuse, hits, keyword_ranking, single, vision_ranking
from ragged.query.modes import Mode
from ragged.query.text_vectors import TextVectors
from ragged.query.weights import SignalWeights, index_weights
from ragged.text.embedder import TextEmbedder


@dataclass(frozen=True)
class QueryAnswer:
    """The ``k`` best pages for each query of a call, and what produced them."""

    hits: list[list[SearchHit]]
    notices: list[tuple[str, ...]] = field(default_factory=list)  # per query: e.g. it was cut to a model's length
    reports: tuple[EmbeddingReport, ...] = ()  # the models' figures for this call
    pages_searched: int = 0
    device: str | None = None  # where the first model used ran (None: no model was needed)
    pages_scored: int | None = None  # pages whose vectors MaxSim scored, for any query (None: no image search)


@dataclass
class QueryEngine:
    """The index's vectors and models, ready to answer in every mode.

    ``vision`` and ``text`` are called when a mode first needs them (so a
    model is loaded only when used). The engine keeps no state of a call:
    concurrent callers each get their own answer."""

    store: IndexStore
    source: VectorSource
    vision: Callable[[], ColPaliEmbedder]
    text: Callable[[], TextEmbedder] | None
    runtime: Runtime
    _passages: tuple[Catalog, TextVectors] | None = None
    _weights: SignalWeights | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def refresh(self, store: IndexStore) -> None:
        """Answer from ``store`` (reopened after new commits): its passage
        vectors and fusion weights are read again when next needed."""
        with self._lock:
            self.store = store
            self._passages = None
            self._weights = None

    def weights(self, catalog: Catalog) -> SignalWeights:
        """Each signal's weight in hybrid fusion, learned from the index
        (:mod:`ragged.query.weights`; kept under the index, so learnt once)."""
        with self._lock:
            known, store = self._weights, self.store
        if known is not None:
            return known
        text = self.text
        learnt = index_weights(store, catalog, lambda q, p: self._vision_scores(store, catalog, q, p),
                               (lambda q, p: self._text_scores(catalog, q, p)) if text is not None else None)
        with self._lock:
            if self.store is store:
                self._weights = learnt
        return learnt

    def _vision_scores(self, store: IndexStore, catalog: Catalog, queries: list[str],
                       positions: list[int]) -> np.ndarray:
        pages = catalog.pages
        vectors = [np.asarray(store.page_vectors(pages[p].doc_hash, pages[p].page)) for p in positions]
        return maxsim_scores(self.vision().embed_queries(queries), vectors)  # (queries, pages)

    def _text_scores(self, catalog: Catalog, queries: list[str], positions: list[int]) -> np.ndarray:
        assert self.text is not None
        return self._text_vectors(catalog).best_of(self.text().embed_queries(queries), positions)  # (queries, pages)

    def _text_vectors(self, catalog: Catalog) -> TextVectors:
        """The passage vectors numbered against ``catalog`` (read once per catalog)."""
        with self._lock:
            held = self._passages
            store = self.store
        if held is not None and held[0] is catalog:
            return held[1]
        vectors = TextVectors.load(store, catalog)
        with self._lock:
            if self.store is store:
                self._passages = (catalog, vectors)
        return vectors

    def answer(self, queries: list[str], k: int, mode: Mode, exact: bool = False) -> QueryAnswer:
        """The ``k`` best pages for each query in ``mode``. Page images are
        ranked by exact MaxSim over the candidate stage's pages, or, with
        ``exact``, over every page (a full scan)."""
        catalog = self.source.catalog  # the one snapshot this answer uses
        depth = depth_for(k) if mode is Mode.HYBRID else k
        per_query: list[dict[str, Ranking]] = [{} for _ in queries]
        notices: list[list[str]] = [[] for _ in queries]
        reports: list[EmbeddingReport] = []
        device: str | None = None
        scored: int | None = None
        if mode in (Mode.VISION, Mode.HYBRID):
            embedder = self.vision()
            run = embedder.encode_queries(queries)
            for i in range(len(queries)):
                notices[i].extend(run.notices_of(i))
            reports.append(run.report)
            device = run.report.device
            searcher = MaxSimSearcher(_Pinned(self.source, catalog), embedder.device, self.runtime)
            vectors = run.values()
            scores = searcher.score_all(vectors) if exact else searcher.score_candidates(vectors, depth)  # (pages, q)
            scored = int(np.isfinite(scores).any(axis=1).sum())
            for i in range(len(queries)):
                per_query[i][Mode.VISION.value] = vision_ranking(scores[:, i], depth)
        if mode in (Mode.TEXT, Mode.HYBRID) and self.text is not None:
            text_run = self.text().encode_queries(queries)
            for i in range(len(queries)):
                notices[i].extend(text_run.notices_of(i))
            reports.append(text_run.report)
            device = device or text_run.report.device
            passages = self._text_vectors(catalog)
            for i, vector in enumerate(text_run.values()):
                per_query[i][Mode.TEXT.value] = passages.rank(vector, depth)
        if mode in (Mode.KEYWORD, Mode.HYBRID):
            for i, query in enumerate(queries):
                per_query[i][Mode.KEYWORD.value] = keyword_ranking(self.store, catalog, query, depth, notices[i])
        weights = self.weights(catalog) if mode is Mode.HYBRID else SignalWeights()  # after the queries' model work
        for said in notices:
            said.extend(weights.notices())
        out = []
        for rankings in per_query:
            if mode is Mode.HYBRID:
                out.append(hits(catalog, fuse(rankings, k, weights)))
            else:
                ranking = rankings.get(mode.value, Ranking(np.zeros(0, dtype=np.int64), np.zeros(0)))
                out.append(hits(catalog, single(mode.value, ranking, k)))
        return QueryAnswer(out, [tuple(dict.fromkeys(n)) for n in notices], tuple(reports), len(catalog.pages), device,
                           scored)


class _Pinned:
    """A vector source read against one catalog snapshot (the answer's)."""

    def __init__(self, source: VectorSource, catalog: Catalog) -> None:
        self._source, self._catalog = source, catalog

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def _check(self) -> None:
        if self._source.catalog is not self._catalog:
            raise RuntimeError("The index changed during an answer; its source must be refreshed between answers.")

    def blocks(self, max_vectors: int) -> Iterator[Block]:
        self._check()
        return self._source.blocks(max_vectors)

    def pooled_blocks(self, max_vectors: int) -> Iterator[Block]:
        self._check()
        return self._source.pooled_blocks(max_vectors)  # type: ignore[attr-defined, no-any-return]

    def page_blocks(self, positions: np.ndarray, max_vectors: int) -> Iterator[Block]:
        self._check()
        return self._source.page_blocks(positions, max_vectors)  # type: ignore[attr-defined, no-any-return]


__all__ = ["QueryAnswer", "QueryEngine"]
