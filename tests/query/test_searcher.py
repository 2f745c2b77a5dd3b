"""The library's Searcher shared by threads: each search gets its own hits,
notices and reports (results are values; the engine keeps no state of a call)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.gpu import Runtime
from ragged.index.results import SearchResult
from ragged.query.searcher import Searcher
from tests.serve.conftest import build_index

LONG = "quarterly revenue " * 400  # over the 512 tokens the vision model takes: it is cut, with a notice


@pytest.fixture(scope="module")
def index(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return build_index(tmp_path_factory.mktemp("query") / "index", model_cache)


@pytest.fixture
def searcher(index: Path, model_cache: Path) -> Iterator[Searcher]:
    with Searcher(index, cache_dir=model_cache) as shared:
        yield shared


def test_two_overlapping_searches_each_get_their_own_notices_and_reports(
        searcher: Searcher, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both searches embed their query before either scores (a barrier holds
    each after its embedding), so every step after the models' runs overlaps."""
    both_embedded = threading.Barrier(2, timeout=60)
    real = ColPaliEmbedder.encode_queries

    def encode_then_wait(self: ColPaliEmbedder, texts: list[str]):  # type: ignore[no-untyped-def]
        run = real(self, texts)
        both_embedded.wait()
        return run

    monkeypatch.setattr(ColPaliEmbedder, "encode_queries", encode_then_wait)
    results: dict[str, SearchResult] = {}

    def ask(name: str, query: str) -> None:
        results[name] = searcher.search(query, k=3, mode="hybrid")

    threads = [threading.Thread(target=ask, args=("long", LONG)), threading.Thread(target=ask, args=("short", "rent"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    long, short = results["long"], results["short"]
    assert not any("cut to its first" in n for n in short.notices)
    assert sum("cut to its first 512 tokens" in n for n in long.notices) == 1
    assert [r.model for r in long.reports] == ["tiny-colpali", "all-MiniLM-L6-v2"]  # vision, then text
    assert all(r.items == 1 for r in long.reports + short.reports)  # each report is its own search's
    assert not set(map(id, long.reports)) & set(map(id, short.reports))
    assert len(short.hits) == 3 and short.query == "rent"


def test_models_are_made_once_whichever_thread_asks_first(searcher: Searcher) -> None:
    made: list[ColPaliEmbedder] = []
    start = threading.Barrier(4, timeout=60)

    def get() -> None:
        start.wait()
        made.append(searcher.vision())

    threads = [threading.Thread(target=get) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(made) == 4 and all(m is made[0] for m in made)


def test_a_searcher_uses_the_runtime_it_is_given(index: Path, model_cache: Path) -> None:
    with Runtime() as runtime:
        with Searcher(index, cache_dir=model_cache, runtime=runtime) as searcher:
            searcher.search("lemon tart", k=2, mode="vision")
            assert searcher.vision().runtime is runtime
            assert any(key.startswith(searcher.vision().job.key) for key in runtime.model_manager.loaded)
        assert runtime.model_manager.loaded  # the searcher closed, the runtime (its owner's) still holds it
    assert not runtime.model_manager.loaded  # closing the runtime unloads
