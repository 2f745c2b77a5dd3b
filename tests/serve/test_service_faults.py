"""The service when things go wrong: an OOM in one request, a damaged index,
a mode that needs no vision model while it is unloaded."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from starlette.testclient import TestClient

from ragged.errors import ServiceUnavailable
from ragged.query.modes import Mode
from ragged.serve.app import create_app
from ragged.serve.service import SearchService, ServiceConfig


@pytest.fixture
def service(sample_index: Path, model_cache: Path) -> Iterator[SearchService]:
    running = SearchService(ServiceConfig(index_dir=sample_index, cache_dir=model_cache, idle_unload_s=None))
    running.start()
    yield running
    running.close()


def test_a_request_that_runs_out_of_memory_fails_alone(service: SearchService,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Requests waiting together are answered in one pass; one whose query
    cannot be embedded (OOM at every size) fails with its own error, and the
    others get their hits."""
    assert service.embedder is not None
    processor = service.embedder.processor
    real = processor.process_queries

    def process_queries(texts: list[str]) -> object:
        if any("explode" in t for t in texts):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return real(texts)

    monkeypatch.setattr(processor, "process_queries", process_queries)
    gate = threading.Event()
    service._run(gate.wait)  # hold the worker so that the three requests wait together
    futures = [service.search([q], 3, Mode.VISION) for q in ("lemon tart", "explode now", "quarterly revenue")]
    gate.set()
    good = [futures[0].result(timeout=60), futures[2].result(timeout=60)]
    with pytest.raises(ServiceUnavailable, match="Out of memory"):
        futures[1].result(timeout=60)
    assert all(len(answer.hits[0]) == 3 for answer in good)
    assert good[0].batch_queries == 3  # the three were one pass before the split
    assert service.failures_total == 1
    assert service.runtime is not None and service.runtime.oom_handler.stats.recoveries.get("cpu_fallback", 0) == 0


def test_requests_answered_in_one_pass_get_only_their_own_notices(service: SearchService) -> None:
    """A query cut to the model's length says so to its own request, not to
    the others that shared its pass (results are values, not shared state)."""
    assert service.embedder is not None
    long_query = "quarterly revenue " * 400  # over the 512 tokens the vision model takes
    gate = threading.Event()
    service._run(gate.wait)  # hold the worker so that the requests share one pass
    futures = [service.search([q], 3, Mode.VISION) for q in ("lemon tart", long_query, "rent deposit")]
    gate.set()
    short, cut, other = (f.result(timeout=60) for f in futures)
    assert short.batch_queries == 3  # one pass
    assert short.notices == [] and other.notices == []
    assert len(cut.notices) == 1 and "cut to its first 512 tokens" in cut.notices[0]


def test_keyword_and_text_searches_never_load_the_vision_model(service: SearchService) -> None:
    assert service.embedder is not None and service.runtime is not None
    service.runtime.model_manager.unload(service.embedder.job.key)  # as an idle unload would
    for mode in (Mode.KEYWORD, Mode.TEXT):
        answer = service.search(["lemon tart"], 3, mode).result(timeout=60)
        assert answer.hits[0] and answer.model_load_ms is None
    assert not service.embedder.job.loaded
    hybrid = service.search(["lemon tart"], 3, Mode.HYBRID).result(timeout=60)
    assert service.embedder.job.loaded and hybrid.model_load_ms is not None


def test_a_damaged_index_makes_the_service_not_ready_and_says_why(sample_index: Path, model_cache: Path,
                                                                  tmp_path: Path) -> None:
    index = tmp_path / "index"
    shutil.copytree(sample_index, index)
    for data in (index / "lancedb" / "pages.lance" / "data").iterdir():
        data.unlink()
    shutil.rmtree(index / "segments")
    shutil.rmtree(index / "catalog")
    broken = SearchService(ServiceConfig(index_dir=index, cache_dir=model_cache, idle_unload_s=None))
    broken.start()
    try:
        with TestClient(create_app(broken), raise_server_exceptions=False,
                        base_url="http://127.0.0.1") as client:
            ready = client.get("/ready")
            assert ready.status_code == 503 and "could not be loaded" in ready.json()["reason"]
            assert "is damaged" in ready.json()["reason"]
            for response in (client.post("/search", json={"query": "tart"}),
                             client.post("/heatmap", json={"doc_hash": "0" * 64, "page": 1, "query": "tart"}),
                             client.get(f"/pages/{'0' * 64}/1.png")):
                assert response.status_code == 503 and "could not be loaded" in response.json()["error"]
    finally:
        broken.close()
