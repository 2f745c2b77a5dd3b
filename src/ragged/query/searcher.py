"""Search in this process: an index opened once, its models kept (a notebook,
a script, ``ragged search --local``).

:class:`Searcher` is an entry point: it builds the
:class:`~ragged.gpu.runtime.Runtime` (or takes the caller's) and hands it to
the models and the search it makes. Threads may share one searcher: each
search returns its own result, notices and reports.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.names import stored_name
from ragged.errors import ModelMismatchError
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.runtime import Runtime
from ragged.index.results import SearchResult, check_query
from ragged.index.search import SegmentSource
from ragged.index.store import IndexStore
from ragged.query.engine import QueryEngine
from ragged.query.modes import Mode, parse_mode
from ragged.text.embedder import TextEmbedder


def check_model(store: IndexStore, model: str | None) -> None:
    """Refuse to search with a model other than the index's."""
    assert store.meta is not None
    if model is not None and stored_name(model) != store.meta.model:
        raise ModelMismatchError(
            f"The index at {store.folder} was built with {store.meta.model!r}, not {model!r}; "
            "search it without --model, or pick the index built by that model."
        )


class Searcher:
    """An index opened once, its models loaded on first use and kept: many
    queries without a model load each (the server is the same thing behind
    HTTP). ``runtime`` is the program's resource manager; without one the
    searcher builds its own (with ``policy``) and closes it. Close the
    searcher, or use ``with``."""

    def __init__(self, index_dir: Path, *, device: DeviceHint = None, model: str | None = None,
                 cache_dir: Path | None = None, policy: MemoryPolicy | None = None,
                 runtime: Runtime | None = None) -> None:
        self.store = IndexStore.open(index_dir)
        check_model(self.store, model)
        assert self.store.meta is not None
        self._owns_runtime = runtime is None
        self.runtime = runtime if runtime is not None else Runtime(policy=policy)
        self.device, self.cache_dir = device, cache_dir
        self._vision: ColPaliEmbedder | None = None
        self._text: TextEmbedder | None = None
        self._lock = threading.Lock()  # models are made once, whichever thread asks first
        self.source = SegmentSource(self.store)
        self.engine = QueryEngine(self.store, self.source, self.vision,
                                  self.text if self.store.meta.text_model else None, self.runtime)

    def vision(self) -> ColPaliEmbedder:
        """The index's vision model (loaded on first use)."""
        with self._lock:
            if self._vision is None:
                assert self.store.meta is not None
                self._vision = ColPaliEmbedder(self.store.meta.model, device=self.device, cache_dir=self.cache_dir,
                                               runtime=self.runtime)
            return self._vision

    def text(self) -> TextEmbedder:
        """The index's text model (loaded on first use)."""
        with self._lock:
            if self._text is None:
                meta = self.store.meta
                assert meta is not None and meta.text_model is not None
                self._text = TextEmbedder(meta.text_model, self.device, cache_dir=self.cache_dir,
                                          runtime=self.runtime)
            return self._text

    def refresh(self) -> bool:
        """Search what was committed since the index was opened (the models
        stay loaded); True when anything changed."""
        stamp = self.store.stamp()
        fresh = IndexStore.open(self.store.folder)
        if fresh.stamp() == stamp:
            return False
        check_model(fresh, None)
        with self._lock:
            self.store, self.source = fresh, SegmentSource(fresh)
            self.engine.source = self.source
            self.engine.refresh(fresh)
            self.engine.text = self.text if fresh.meta is not None and fresh.meta.text_model else None  # added later
        return True

    def search(self, query: str, *, k: int = 10, mode: str | Mode | None = None, exact: bool = False) -> SearchResult:
        """The ``k`` best pages for ``query``: MaxSim, text, keyword or hybrid
        (the default where the index has text). MaxSim scores the candidate
        stage's pages exactly, or, with ``exact``, every page."""
        text = check_query(query)
        started = time.perf_counter()
        assert self.store.meta is not None
        chosen = parse_mode(mode, self.store.meta.text_model is not None)
        answer = self.engine.answer([text], k, chosen, exact)
        return SearchResult(text, answer.hits[0], self.store.meta.model, answer.device or "index only",
                            answer.pages_searched, time.perf_counter() - started, list(answer.notices[0]),
                            chosen.value, text_model=self.store.meta.text_model, reports=answer.reports,
                            pages_scored=answer.pages_scored)

    def close(self) -> None:
        """Release the models (and the runtime, if this searcher made it)."""
        for model in (self._vision, self._text):
            if model is not None:
                model.close()
        if self._owns_runtime:
            self.runtime.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search(query: str, index_dir: Path, *, k: int = 10, device: DeviceHint = None, model: str | None = None,
           cache_dir: Path | None = None, policy: MemoryPolicy | None = None,
           mode: str | Mode | None = None, runtime: Runtime | None = None, exact: bool = False) -> SearchResult:
    """The ``k`` best pages for ``query`` in one call (the index opened and
    its models loaded for this query alone; see :class:`Searcher` for many)."""
    check_query(query)  # before opening anything
    with Searcher(index_dir, device=device, model=model, cache_dir=cache_dir, policy=policy,
                  runtime=runtime) as searcher:
        return searcher.search(query, k=k, mode=mode, exact=exact)


__all__ = ["SearchResult", "Searcher", "check_model", "check_query", "search"]
