"""The search service: the index and the query model, held under the resource manager.

One worker thread owns the model and the resident index. Search requests
that arrive while it is busy wait in a queue and are then answered
together: their queries are embedded in one batch and scored in one pass
over the page vectors, which is where the time goes. The batch of requests
runs through the same :class:`~ragged.gpu.batch_runner.BatchRunner` and
recovery engine as ingest: a batch that runs out of memory is split, and a
request that cannot be answered fails alone, so no request is dropped or
answered with another's hits.

The service is an entry point: it builds the one
:class:`~ragged.gpu.runtime.Runtime` of the server, whose model manager has
an idle timeout: a model is unloaded when no query came for a while (its
memory returned), loaded again by the next query, which says so in its
timing. Each pass returns its hits and notices as values; nothing of one
request is kept on the service for another to read.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from loguru import logger

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.errors import PageUnavailable, RaggedError, ServiceUnavailable
from ragged.gpu.batch_runner import BatchRunner, ItemFailure
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.runtime import Runtime
from ragged.gpu.types import DeviceInfo
from ragged.index.resident import ResidentIndex
from ragged.index.results import SearchHit
from ragged.index.store import IndexStore
from ragged.multivector.maxsim import maxsim_scores
from ragged.query.engine import QueryEngine
from ragged.query.modes import Mode
from ragged.serve.heatmap import heatmap
from ragged.serve.pages import PageRenderer
from ragged.serve.query_words import words_of
from ragged.text.embedder import TextEmbedder

T = TypeVar("T")
REQUESTS = "requests"  # the kind of work the request batches are, for the OOM engine
VISION_MODES = (Mode.VISION, Mode.HYBRID)  # the modes that need the vision model


@dataclass(frozen=True)
class ServiceConfig:
    """Settings of one server."""

    index_dir: Path
    device: str = "auto"
    idle_unload_s: float | None = 300.0  # None: keep the model loaded
    cache_dir: Path | None = None
    policy: MemoryPolicy = field(default_factory=MemoryPolicy)
    max_query_chars: int = 2000
    max_queries: int = 32  # per request
    max_k: int = 1000
    max_batch_queries: int = 64  # queries embedded and scored in one pass
    refresh_s: float = 2.0  # how often the index is checked for new commits


@dataclass(frozen=True)
class Answer:
    """Hits for each query of one request, and what produced them."""

    hits: list[list[SearchHit]]
    model: str
    device: str
    batch_queries: int  # queries in the pass this request shared
    compute_ms: float
    model_load_ms: float | None  # set when the model had to be loaded for this pass
    notices: list[str]
    mode: str = "vision"
    pages_scored: int | None = None  # pages MaxSim scored in this request's pass (None: no image search)


@dataclass(frozen=True)
class _Passed:
    """One request's part of a pass."""

    hits: list[list[SearchHit]]
    notices: tuple[str, ...]
    pages_scored: int | None = None


@dataclass
class _Request:
    queries: list[str]
    k: int
    mode: Mode
    future: Future[Answer]
    exact: bool = False


class SearchService:
    """Holds one index and its query model; answers searches in batches."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.store = IndexStore.open(config.index_dir)
        assert self.store.meta is not None
        self.model_name = self.store.meta.model
        self.runtime: Runtime | None = None
        self.embedder: ColPaliEmbedder | None = None
        self.resident: ResidentIndex | None = None
        self.engine: QueryEngine | None = None
        self.device: DeviceInfo | None = None  # where the vectors are searched (the vision model's device)
        self.start_error: str | None = None  # why the index could not be loaded
        self.text_embedder: TextEmbedder | None = None
        self.renderer = PageRenderer(config.index_dir)
        self.model_error: str | None = None
        self.failures_total = 0
        self._outcomes: deque[bool] = deque(maxlen=3)
        self._pending: list[_Request] = []
        self._lock = threading.Lock()
        self._scheduled = False
        self._worker = ThreadPoolExecutor(1, "ragged-serve")
        self._stop = threading.Event()
        self._refresher: threading.Thread | None = None
        self.on_batch: Callable[[int], None] | None = None  # queries answered by one pass: for metrics

    # -- life -------------------------------------------------------------

    def start(self) -> None:
        """Load the model and the index on the worker; failures make the
        service not ready, never stop it."""
        self._run(self._start).result()
        self._refresher = threading.Thread(target=self._refresh_loop, name="ragged-refresh", daemon=True)
        self._refresher.start()

    def _start(self) -> None:
        self.runtime = runtime = Runtime(policy=self.config.policy, idle_timeout_s=self.config.idle_unload_s)
        if self.config.idle_unload_s:
            runtime.model_manager.start_reaper(interval_s=max(0.05, min(5.0, self.config.idle_unload_s / 4)))
        with suppress(ServiceUnavailable):  # not ready, and /ready says why; a later search tries again
            self._load_model()
        try:
            device = self.embedder.device if self.embedder is not None else runtime.device(self.config.device)
            self.resident = ResidentIndex(self.store, device, runtime.device_manager, self.config.policy)
        except Exception as exc:  # a damaged index: not ready, and /ready and every search say why
            self.start_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            logger.error("The index could not be loaded: {}", self.start_error)
            return
        self.device = device
        self.engine = QueryEngine(self.resident.store, self.resident, self._vision,
                                  self._text if self.has_text else None, runtime)
        logger.info("Serving {}", self.summary())

    def summary(self) -> str:
        """What is served, and the resident form the memory policy chose and why (the start-up line)."""
        if self.resident is None or self.device is None:
            return f"{self.config.index_dir}: not loaded ({self.readiness()[1]})"
        resident = self.resident
        loading = f"; loading {resident.loading} in the background" if resident.loading else ""
        return (f"{len(resident.catalog.pages):,} pages of {self.config.index_dir} with {self.model_name} on "
                f"{self.device.label} (vectors {resident.form}: {resident.memory_bytes / 2**20:,.0f} MiB{loading}; "
                f"{resident.choice.reason})")

    def _load_model(self) -> float | None:
        """Load the model if it is not held; the milliseconds it took, or None."""
        if self.embedder is not None and self.embedder.job.loaded:
            return None
        started = time.perf_counter()
        try:
            if self.embedder is None:
                assert self.runtime is not None
                self.embedder = ColPaliEmbedder(self.model_name, device=self.config.device,
                                                cache_dir=self.config.cache_dir, runtime=self.runtime)
            else:
                self.embedder.job.model()
        except RaggedError as exc:
            self.model_error = str(exc)
            logger.error("Loading the model failed: {}", exc)
            raise ServiceUnavailable(f"The model could not be loaded: {exc}") from exc
        self.model_error = None
        return (time.perf_counter() - started) * 1000

    @property
    def has_text(self) -> bool:
        """True when the index has a text side (text, keyword and hybrid modes)."""
        return self.text_model is not None

    @property
    def text_model(self) -> str | None:
        """The index's text model (None: it has no text side)."""
        meta = self.resident.store.meta if self.resident is not None else self.store.meta
        return meta.text_model if meta is not None else None

    def _vision(self) -> ColPaliEmbedder:
        self._load_model()
        assert self.embedder is not None
        return self.embedder

    def _text(self) -> TextEmbedder:
        if self.text_embedder is None:
            meta = self.resident.store.meta if self.resident is not None else self.store.meta
            assert meta is not None and meta.text_model is not None and self.runtime is not None
            self.text_embedder = TextEmbedder(meta.text_model, self.config.device, cache_dir=self.config.cache_dir,
                                              runtime=self.runtime)
        return self.text_embedder

    def _refresh_loop(self) -> None:
        while not self._stop.wait(self.config.refresh_s):
            try:
                self._run(self._refresh).result()
            except Exception as exc:  # a damaged commit must not stop the service
                logger.warning("Reading new documents failed: {}", exc)

    def _refresh(self) -> bool:
        if self.resident is None or not self.resident.refresh():
            return False
        if self.engine is not None:
            self.engine.refresh(self.resident.store)
            self.engine.text = self._text if self.has_text else None  # a text side added by a later ingest
        return True

    def close(self) -> None:
        """Stop the worker (after the searches in flight) and release the model."""
        self._stop.set()
        self._worker.shutdown(wait=True, cancel_futures=True)
        if self._refresher is not None:
            self._refresher.join(timeout=5)
        if self.resident is not None:
            self.resident.release()
        if self.embedder is not None:
            self.embedder.close()
        if self.text_embedder is not None:
            self.text_embedder.close()
        if self.runtime is not None:
            self.runtime.close()

    def _run(self, fn: Callable[[], T]) -> Future[T]:
        return self._worker.submit(fn)

    # -- state ------------------------------------------------------------

    def readiness(self) -> tuple[bool, str]:
        """(ready, why not): the index is open, the model loaded or loadable
        (its last load did not fail), and the latest searches did not all fail."""
        if self.start_error is not None:
            return False, f"the index could not be loaded: {self.start_error}"
        if self.resident is None:
            return False, "starting: the index is not loaded yet"
        if self.model_error is not None:
            return False, f"the model failed to load: {self.model_error}"
        if len(self._outcomes) == self._outcomes.maxlen and not any(self._outcomes):
            return False, f"the last {len(self._outcomes)} searches failed"
        return True, "ready"

    @property
    def pages(self) -> int:
        """Pages being searched."""
        return len(self.resident.catalog.pages) if self.resident is not None else 0

    # -- searching --------------------------------------------------------

    def search(self, queries: list[str], k: int, mode: Mode = Mode.VISION, exact: bool = False) -> Future[Answer]:
        """Answer ``queries`` (each the ``k`` best pages in ``mode``; with
        ``exact``, MaxSim over every page), batched with whatever else is waiting."""
        future: Future[Answer] = Future()
        with self._lock:
            self._pending.append(_Request(queries, k, mode, future, exact))
            if not self._scheduled:
                self._scheduled = True
                self._run(self._drain)
        return future

    def _drain(self) -> None:
        with self._lock:
            pending, self._pending, self._scheduled = self._pending, [], False
        group: list[_Request] = []
        for request in pending:
            if group and sum(len(r.queries) for r in group) + len(request.queries) > self.config.max_batch_queries:
                self._answer(group)
                group = []
            group.append(request)
        if group:
            self._answer(group)

    def _answer(self, group: list[_Request]) -> None:
        started = time.perf_counter()
        if self.engine is None or self.device is None or self.runtime is None:
            self._fail(group, ServiceUnavailable(self.readiness()[1]))
            return
        load_ms = None
        if any(r.mode in VISION_MODES for r in group):  # keyword and text never load the vision model
            try:
                load_ms = self._load_model()
            except ServiceUnavailable as exc:
                self._fail([r for r in group if r.mode in VISION_MODES], exc)
                group = [r for r in group if r.mode not in VISION_MODES]
                if not group:
                    return
        runner: BatchRunner[_Passed] = BatchRunner(
            self.device, None, self.runtime.oom_handler, fixed_batch_size=len(group), prefetch=False, work=REQUESTS,
            cpu_fallback=False,  # a pass places its own parts (query embedding, scoring), each with its own recovery
            cadence=self.runtime.cadence_for(self.device, REQUESTS),  # not every request's batch measured
        )
        costs = [sum(len(q) for q in r.queries) for r in group]
        try:
            results, _ = runner.run(costs, lambda indices, _device: self._pass([group[i] for i in indices]),
                                    keep_going=True)
        except Exception as exc:  # anything else: every request of the group gets the error, none is lost
            logger.exception("Search failed")
            self._fail(group, exc)
            return
        seconds = time.perf_counter() - started
        queries = sum(len(r.queries) for r in group)
        if self.on_batch is not None:
            self.on_batch(queries)
        for request, result in zip(group, results, strict=True):
            if isinstance(result, ItemFailure):
                self._fail([request], ServiceUnavailable(result.reason))
                continue
            self._outcomes.append(True)
            request.future.set_result(Answer(result.hits, self.model_name, self.device.label, queries,
                                             seconds * 1000, load_ms, list(result.notices), request.mode.value,
                                             result.pages_scored))

    def _pass(self, requests: list[_Request]) -> list[_Passed]:
        """Embed the queries of ``requests`` together and score them in one pass
        (one pass per mode asked for); each request's hits and notices."""
        assert self.engine is not None
        answers: dict[int, _Passed] = {}
        for mode, exact in {(r.mode, r.exact) for r in requests}:
            group = [(n, r) for n, r in enumerate(requests) if r.mode is mode and r.exact == exact]
            texts = [q for _, r in group for q in r.queries]
            answer = self.engine.answer(texts, max(r.k for _, r in group), mode, exact)
            at = 0
            for n, request in group:
                mine = [h[: request.k] for h in answer.hits[at : at + len(request.queries)]]
                notices = [text for per_query in answer.notices[at : at + len(request.queries)] for text in per_query]
                answers[n] = _Passed(mine, tuple(dict.fromkeys(notices)), answer.pages_scored)
                at += len(request.queries)
        return [answers[n] for n in range(len(requests))]

    def _fail(self, requests: list[_Request], exc: BaseException) -> None:
        for request in requests:
            self.failures_total += 1
            self._outcomes.append(False)
            request.future.set_exception(exc if isinstance(exc, RaggedError) else ServiceUnavailable(
                f"The search failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"))

    # -- pages ------------------------------------------------------------

    def page_png(self, doc_hash: str, page: int, width: int) -> bytes:
        """A page image (see :class:`~ragged.serve.pages.PageRenderer`)."""
        if self.resident is None:
            raise ServiceUnavailable(self.readiness()[1])
        return self.renderer.png(self.resident.catalog, doc_hash, page, width)

    def page_texts(self, pairs: list[tuple[str, int]]) -> Future[dict[tuple[str, int], str]]:
        """The stored text of these pages (on the worker, like every read of the index)."""
        def read() -> dict[tuple[str, int], str]:
            if self.resident is None:
                raise ServiceUnavailable(self.readiness()[1])
            return self.resident.store.page_texts(pairs)

        return self._run(read)

    def heatmap(self, doc_hash: str, page: int, query: str) -> Future[dict[str, Any]]:
        """The MaxSim heat-map of ``query`` over one page (on the worker)."""
        return self._run(lambda: self._heatmap(doc_hash, page, query))

    def _heatmap(self, doc_hash: str, page: int, query: str) -> dict[str, Any]:
        if self.resident is None:
            raise ServiceUnavailable(self.readiness()[1])
        record = self.renderer.record(self.resident.catalog, doc_hash, page)
        if record.grid is None:
            raise PageUnavailable("This page has no patch grid (its model has none, or it was ingested "
                                  "before ragged stored them).", 404)
        embedder = self._vision()
        vectors = embedder.embed_queries([query])[0]  # (tokens, dim)
        words = words_of(embedder, query, len(vectors))
        page_vectors = np.asarray(self.resident.store.page_vectors(doc_hash, page))  # (n, dim)
        result = heatmap(vectors, words, page_vectors, record.grid).to_dict()
        result["score"] = float(maxsim_scores([vectors], [page_vectors])[0, 0])  # what search gives this page
        return result
