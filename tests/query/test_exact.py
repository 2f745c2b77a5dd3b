"""Candidate search by default, the full scan on request: ``ragged search
--exact`` and ``"exact": true`` in a /search body score every page."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from starlette.testclient import TestClient

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.gpu import Runtime
from ragged.index import candidates
from ragged.index.store import IndexStore
from ragged.serve.app import create_app
from ragged.serve.service import SearchService, ServiceConfig
from tests.cli.conftest import Ragged
from tests.serve.conftest import numpy_hits

QUERY = "quarterly revenue"
PAGES, PLANTED = 300, 12


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> tuple[Path, np.ndarray]:
    """300 pages under tiny-colpali's name: vectors near 2-4 of 40 topics, and on
    12 of them the query's own vectors (with noise): the pages it must find."""
    with Runtime() as runtime, ColPaliEmbedder("tiny-colpali", cache_dir=model_cache, runtime=runtime) as model:
        query = np.asarray(model.embed_queries([QUERY])[0], dtype=np.float32)  # (tokens, dim)
    dim = query.shape[1]
    topics = unit(np.random.default_rng(3).standard_normal((40, dim)))
    index = tmp_path_factory.mktemp("exact") / "index"
    with IndexStore.open_for_writing(index, "tiny-colpali") as store:
        for d in range(PAGES // 10):
            pages = []
            for n in range(d * 10, d * 10 + 10):
                rng = np.random.default_rng(n)
                own = topics[rng.choice(40, 3, replace=False)[rng.integers(0, 3, 40)]]
                page = unit(own + 0.1 * rng.standard_normal(own.shape))
                if n % (PAGES // PLANTED) == 0:
                    page = np.concatenate([page, unit(query + (0.02 + 0.01 * (n % 7)) * rng.standard_normal(
                        query.shape))])
                pages.append(page)
            store.add_document(f"{d:064x}", f"/docs/{d}.pdf", pages)
    return index, query


@pytest.fixture
def small_rounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(candidates, "CANDIDATES", 24)
    monkeypatch.setattr(candidates, "PROBE", 8)


def test_the_command_line_scores_candidates_and_with_exact_every_page(
        planted: tuple[Path, np.ndarray], model_cache: Path, tmp_path: Path, small_rounds: None) -> None:
    index, query = planted
    ragged = Ragged(model_cache, tmp_path)
    args = ["search", QUERY, "--index", str(index), "--local", "--mode", "vision", "-k", "10", "--json"]
    fast = json.loads(ragged(*args).stdout)
    full = json.loads(ragged(*args, "--exact").stdout)
    assert full["pages_searched"] == full["pages_scored"] == PAGES
    assert fast["pages_searched"] == PAGES and fast["pages_scored"] < PAGES // 4
    want = numpy_hits(index, query, 10)
    for found in (fast, full):
        assert [(h["doc_hash"], h["page"]) for h in found["hits"]] == [w[:2] for w in want]
        np.testing.assert_allclose([h["score"] for h in found["hits"]], [w[2] for w in want], rtol=1e-4)


@pytest.fixture
def client(planted: tuple[Path, np.ndarray], model_cache: Path) -> Iterator[TestClient]:
    service = SearchService(ServiceConfig(index_dir=planted[0], cache_dir=model_cache, idle_unload_s=None))
    service.start()
    with TestClient(create_app(service), base_url="http://127.0.0.1") as test_client:
        yield test_client
    service.close()


def test_the_server_scores_candidates_and_with_exact_true_every_page(
        client: TestClient, planted: tuple[Path, np.ndarray], small_rounds: None) -> None:
    index, query = planted
    body = {"query": QUERY, "k": 10, "mode": "vision"}
    fast = client.post("/search", json=body).json()
    full = client.post("/search", json={**body, "exact": True}).json()
    assert full["pages_scored"] == PAGES and fast["pages_scored"] < PAGES // 4
    want = [w[:2] for w in numpy_hits(index, query, 10)]
    assert [(h["doc_hash"], h["page"]) for h in fast["hits"]] == want
    assert [(h["doc_hash"], h["page"]) for h in full["hits"]] == want
    refused = client.post("/search", json={**body, "exact": "yes"})
    assert refused.status_code == 400 and refused.json()["error"] == "'exact' must be true or false."
