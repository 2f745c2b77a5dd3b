"""Search: a question in, the best pages out."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.errors import EmptyQueryError, ModelMismatchError
from ragged.gpu.device_manager import DeviceHint
from ragged.index.search import MaxSimSearcher, SearchHit
from ragged.index.store import IndexStore


@dataclass(frozen=True)
class SearchResult:
    """Hits for one query, with what produced them."""

    query: str
    hits: list[SearchHit]
    model: str
    device: str
    pages_searched: int
    seconds: float


def search(query: str, index_dir: Path, *, k: int = 10, device: DeviceHint = None, model: str | None = None,
           cache_dir: Path | None = None) -> SearchResult:
    """The ``k`` best pages for ``query`` by exact MaxSim, with the index's model."""
    if not query or not query.strip():
        raise EmptyQueryError("Empty query: give a few words to search for.")
    started = time.perf_counter()
    store = IndexStore.open(index_dir)
    assert store.meta is not None
    if model is not None and model != store.meta.model:
        raise ModelMismatchError(
            f"The index at {index_dir} was built with {store.meta.model!r}, not {model!r}; "
            "search it without --model, or pick the index built by that model."
        )
    with ColPaliEmbedder(store.meta.model, device=device, cache_dir=cache_dir) as embedder:
        queries = embedder.embed_queries([query.strip()])
        searcher = MaxSimSearcher(store, embedder.device, embedder.device_manager)
        hits = searcher.search(queries, k)[0]
        return SearchResult(query, hits, store.meta.model, embedder.device.label, len(searcher.catalog.pages),
                            time.perf_counter() - started)
