"""Search: a question in, the best pages out (one process, one query)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.names import stored_name
from ragged.errors import ModelMismatchError
from ragged.gpu.device_manager import DeviceHint, default_device_manager
from ragged.gpu.model_manager import ModelManager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.policy import MemoryPolicy
from ragged.index.engine import QueryEngine
from ragged.index.results import SearchResult, check_query
from ragged.index.retrieval import Mode, parse_mode
from ragged.index.search import SegmentSource
from ragged.index.store import IndexStore
from ragged.text.embedder import TextEmbedder


def check_model(store: IndexStore, model: str | None) -> None:
    """Refuse to search with a model other than the index's."""
    assert store.meta is not None
    if model is not None and stored_name(model) != store.meta.model:
        raise ModelMismatchError(
            f"The index at {store.folder} was built with {store.meta.model!r}, not {model!r}; "
            "search it without --model, or pick the index built by that model."
        )


class _Lazy:
    """Models made on first use, closed together."""

    def __init__(self, store: IndexStore, device: DeviceHint, cache_dir: Path | None, policy: MemoryPolicy | None,
                 models: ModelManager, handler: OOMHandler) -> None:
        assert store.meta is not None
        self.meta, self.device, self.cache_dir, self.policy = store.meta, device, cache_dir, policy
        self.models, self.handler = models, handler
        self.made: dict[str, Any] = {}

    def vision(self) -> ColPaliEmbedder:
        if "vision" not in self.made:
            self.made["vision"] = ColPaliEmbedder(self.meta.model, device=self.device, cache_dir=self.cache_dir,
                                                  model_manager=self.models, policy=self.policy,
                                                  oom_handler=self.handler)
        return self.made["vision"]  # type: ignore[no-any-return]

    def text(self) -> TextEmbedder:
        if "text" not in self.made:
            assert self.meta.text_model is not None
            self.made["text"] = TextEmbedder(self.meta.text_model, self.device, cache_dir=self.cache_dir,
                                             device_manager=self.models.manager, model_manager=self.models,
                                             policy=self.policy, oom_handler=self.handler)
        return self.made["text"]  # type: ignore[no-any-return]

    def close(self) -> None:
        for model in self.made.values():
            model.close()
        self.models.close()


class Searcher:
    """An index opened once, its models loaded on first use and kept: many
    queries without a model load each (what a notebook or a script wants;
    the server is the same thing behind HTTP). Close it, or use ``with``."""

    def __init__(self, index_dir: Path, *, device: DeviceHint = None, model: str | None = None,
                 cache_dir: Path | None = None, policy: MemoryPolicy | None = None) -> None:
        self.store = IndexStore.open(index_dir)
        check_model(self.store, model)
        assert self.store.meta is not None
        manager = default_device_manager()
        handler = OOMHandler(manager)
        self._lazy = _Lazy(self.store, device, cache_dir, policy,
                           ModelManager(manager, idle_timeout_s=None, policy=policy), handler)
        self.source = SegmentSource(self.store)
        self.engine = QueryEngine(self.store, self.source, self._lazy.vision,
                                  self._lazy.text if self.store.meta.text_model else None, manager,
                                  policy or MemoryPolicy(), handler)

    def search(self, query: str, *, k: int = 10, mode: str | Mode | None = None) -> SearchResult:
        """The ``k`` best pages for ``query``: exact MaxSim, text, keyword or
        hybrid (the default where the index has text)."""
        text = check_query(query)
        started = time.perf_counter()
        assert self.store.meta is not None
        chosen = parse_mode(mode, self.store.meta.text_model is not None)
        hits = self.engine.answer([text], k, chosen)[0]
        made = self._lazy.made
        used = made.get("vision") or made.get("text")
        return SearchResult(text, hits, self.store.meta.model, used.device.label if used else "index only",
                            len(self.source.catalog.pages), time.perf_counter() - started,
                            list(self.engine.notices), chosen.value, self.store.meta.text_model)

    def close(self) -> None:
        """Release the models."""
        self._lazy.close()

    def __enter__(self) -> Searcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def search(query: str, index_dir: Path, *, k: int = 10, device: DeviceHint = None, model: str | None = None,
           cache_dir: Path | None = None, policy: MemoryPolicy | None = None,
           mode: str | Mode | None = None) -> SearchResult:
    """The ``k`` best pages for ``query`` in one call (the index opened and
    its models loaded for this query alone; see :class:`Searcher` for many)."""
    check_query(query)  # before opening anything
    with Searcher(index_dir, device=device, model=model, cache_dir=cache_dir, policy=policy) as searcher:
        return searcher.search(query, k=k, mode=mode)


__all__ = ["SearchResult", "Searcher", "check_model", "check_query", "search"]
