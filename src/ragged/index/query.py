"""Search: a question in, the best pages out (one process, one query)."""

from __future__ import annotations

import time
from pathlib import Path

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.embeddings.names import stored_name
from ragged.errors import ModelMismatchError
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.policy import MemoryPolicy
from ragged.index.results import SearchResult, check_query
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore


def check_model(store: IndexStore, model: str | None) -> None:
    """Refuse to search with a model other than the index's."""
    assert store.meta is not None
    if model is not None and stored_name(model) != store.meta.model:
        raise ModelMismatchError(
            f"The index at {store.folder} was built with {store.meta.model!r}, not {model!r}; "
            "search it without --model, or pick the index built by that model."
        )


def search(query: str, index_dir: Path, *, k: int = 10, device: DeviceHint = None, model: str | None = None,
           cache_dir: Path | None = None, policy: MemoryPolicy | None = None) -> SearchResult:
    """The ``k`` best pages for ``query`` by exact MaxSim, with the index's model."""
    text = check_query(query)
    started = time.perf_counter()
    store = IndexStore.open(index_dir)
    check_model(store, model)
    assert store.meta is not None
    with ColPaliEmbedder(store.meta.model, device=device, cache_dir=cache_dir, policy=policy) as embedder:
        queries = embedder.embed_queries([text])
        searcher = MaxSimSearcher(store, embedder.device, embedder.device_manager, policy=policy,
                                  oom_handler=embedder.oom_handler)
        hits = searcher.search(queries, k)[0]
        return SearchResult(text, hits, store.meta.model, embedder.device.label, len(searcher.catalog.pages),
                            time.perf_counter() - started, list(embedder.last_query_notices))


__all__ = ["SearchResult", "check_model", "check_query", "search"]
