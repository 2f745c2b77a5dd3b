"""The HTTP API in process (Starlette's test client): answers, limits, token."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from ragged.embeddings import ColPaliEmbedder
from ragged.serve.app import create_app
from ragged.serve.service import SearchService, ServiceConfig
from tests.serve.conftest import metric, numpy_hits

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def service(sample_index: Path, model_cache: Path) -> Iterator[SearchService]:
    running = SearchService(ServiceConfig(index_dir=sample_index, cache_dir=model_cache, idle_unload_s=None,
                                          max_queries=4, max_query_chars=200))
    running.start()
    yield running
    running.close()


@pytest.fixture(scope="module")
def client(service: SearchService) -> Iterator[TestClient]:
    with TestClient(create_app(service), raise_server_exceptions=False,
                    base_url="http://127.0.0.1") as test_client:
        yield test_client


@pytest.fixture(scope="module")
def reference(sample_index: Path, model_cache: Path) -> Iterator[ColPaliEmbedder]:
    with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
        yield emb


def test_search_answers_like_an_in_process_search(client: TestClient, sample_index: Path,
                                                  reference: ColPaliEmbedder) -> None:
    response = client.post("/search", json={"query": "quarterly revenue", "k": 4, "mode": "vision"})
    assert response.status_code == 200
    body = response.json()
    assert body["model"] == "tiny-colpali" and body["device"] == "cpu" and body["pages_searched"] == 6
    assert body["mode"] == "vision" and all(h["signals"] == {"vision": h["rank"]} for h in body["hits"])
    assert body["ms"] > 0 and body["model_load_ms"] is None  # kept loaded
    got = [(h["doc_hash"], h["page"], h["score"]) for h in body["hits"]]
    want = numpy_hits(sample_index, reference.embed_queries(["quarterly revenue"])[0], 4)
    assert [g[:2] for g in got] == [w[:2] for w in want]
    np.testing.assert_allclose([g[2] for g in got], [w[2] for w in want], rtol=1e-4)
    assert [h["rank"] for h in body["hits"]] == [1, 2, 3, 4]
    assert all(h["image"] == f"/pages/{h['doc_hash']}/{h['page']}.png" and h["path"].endswith(".pdf")
               for h in body["hits"])


def test_several_queries_in_one_request(client: TestClient) -> None:
    body = client.post("/search", json={"queries": ["lemon tart", "rent deposit"], "k": 2}).json()
    assert [r["query"] for r in body["results"]] == ["lemon tart", "rent deposit"]
    assert all(len(r["hits"]) == 2 for r in body["results"]) and body["batch_queries"] >= 2
    assert "hits" not in body  # only a single 'query' gets the shortcut


@pytest.mark.parametrize(("mode", "query", "top"), [
    ("text", "how much money did the firm bring in each quarter", "annual-report.pdf"),
    ("keyword", "lemons", "recipe-card.pdf"),
    ("hybrid", "cancelling the tenancy agreement", "rental-contract.pdf"),
])
def test_every_mode_with_the_signals_that_found_each_page(client: TestClient, mode: str, query: str,
                                                          top: str) -> None:
    body = client.post("/search", json={"query": query, "k": 3, "mode": mode}).json()
    assert body["mode"] == mode and body["hits"][0]["path"].endswith(top)
    if mode == "hybrid":
        assert set(body["hits"][0]["signals"]) >= {"vision", "text"}
        assert body["hits"][0]["score"] >= body["hits"][1]["score"]
    else:
        assert all(set(h["signals"]) == {mode} for h in body["hits"])


def test_default_mode_is_hybrid_where_the_index_has_text(client: TestClient) -> None:
    assert client.post("/search", json={"query": "tart"}).json()["mode"] == "hybrid"
    bad = client.post("/search", json={"query": "tart", "mode": "telepathy"})
    assert bad.status_code == 400 and "Unknown mode" in bad.json()["error"]


def test_page_images_are_rendered_once_and_cached(client: TestClient, sample_index: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    hit = client.post("/search", json={"query": "tart", "k": 1}).json()["hits"][0]
    response = client.get(hit["image"] + "?width=300")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    image = Image.open(io.BytesIO(response.content))
    assert image.width == 320  # the cached width at or above the one asked
    cached = sample_index / ".cache" / "pages" / hit["doc_hash"] / f"{hit['page']}-320.png"
    assert cached.read_bytes() == response.content

    def render_again(*args: object) -> None:
        raise AssertionError("a cached page was rendered again")

    monkeypatch.setattr("ragged.serve.pages.render", render_again)
    again = client.get(hit["image"] + "?width=250")  # the same cached width
    assert again.status_code == 200 and again.content == response.content


@pytest.mark.parametrize(("path", "status"), [
    ("/pages/../../../etc/passwd.png", 404),
    ("/pages/" + "0" * 64 + "/1.png", 404),
    ("/pages/..%2F..%2Fetc%2Fpasswd/1.png", 404),
    ("/pages/not-a-hash/1.png", 404),
    ("/pages/" + "a" * 64 + "/one.png", 400),
    ("/nothing-here", 404),
])
def test_no_request_path_reaches_the_file_system(client: TestClient, path: str, status: int) -> None:
    response = client.get(path)
    assert response.status_code == status
    assert "error" in response.json() and "root:" not in response.text


def test_a_changed_file_is_not_served(client: TestClient, service: SearchService, tmp_path: Path) -> None:
    record = service.resident.catalog.pages[0] if service.resident else None
    assert record is not None
    renderer = service.renderer
    original = Path(record.path).read_bytes()
    cached = renderer.cache_dir / record.doc_hash / f"{record.page}-2000.png"
    assert not cached.exists()
    assert client.get(f"/pages/{record.doc_hash}/{record.page}.png?width=160").status_code == 200  # now cached
    Path(record.path).write_bytes(original + b"\n% edited\n")
    try:
        response = client.get(f"/pages/{record.doc_hash}/{record.page}.png?width=1999")
        assert response.status_code == 410 and "changed since it was ingested" in response.json()["error"]
        stale = client.get(f"/pages/{record.doc_hash}/{record.page}.png?width=160")  # its render is cached
        assert stale.status_code == 410
    finally:
        Path(record.path).write_bytes(original)


@pytest.mark.parametrize(("body", "status", "message"), [
    ({"query": "", "k": 3}, 400, "non-empty string"),
    ({"query": "x" * 201}, 413, "longer than 200"),
    ({"query": "tart", "k": 0}, 400, "from 1 to 1000"),
    ({"query": "tart", "k": 1001}, 400, "from 1 to 1000"),
    ({"query": "tart", "k": "3"}, 400, "from 1 to 1000"),
    ({"queries": ["a", "b", "c", "d", "e"]}, 400, "1 to 4 strings"),
    ({"queries": "tart"}, 400, "1 to 4 strings"),
    ({"query": "a", "queries": ["b"]}, 400, "either 'query'"),
    ({}, 400, "either 'query'"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_clear_json_errors(client: TestClient, body: object, status: int, message: str) -> None:
    response = client.post("/search", json=body)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_malformed_and_oversized_bodies(client: TestClient) -> None:
    bad = client.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    big = client.post("/search", content=b"x" * 70_000, headers={"content-type": "application/json"})
    assert big.status_code == 413 and "over 65,536 bytes" in big.json()["error"]
    wrong_method = client.get("/search")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()


def test_health_ready_and_metrics(client: TestClient) -> None:
    assert client.get("/health").json()["status"] == "ok"
    ready = client.get("/ready")
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["pages"] == 6
    counted = ("ragged_queries_total", "ragged_request_seconds_count", "ragged_query_batch_size_count",
               "ragged_query_batch_size_sum")
    before = client.get("/metrics").text
    assert client.post("/search", json={"queries": ["tart", "revenue"], "k": 2}).status_code == 200
    assert client.post("/search", json={"query": ""}).status_code == 400  # a client error: not a failure
    text = client.get("/metrics").text
    grown = {name: metric(text, name) - metric(before, name) for name in counted}
    assert grown == {"ragged_queries_total": 2, "ragged_request_seconds_count": 1,
                     "ragged_query_batch_size_count": 1, "ragged_query_batch_size_sum": 2}
    assert metric(text, "ragged_search_failures_total") == metric(before, "ragged_search_failures_total")
    assert metric(text, "ragged_index_pages") == 6 and metric(text, "ragged_model_loaded") == 1
    assert metric(text, 'ragged_model_events_total{event="load"}') >= 1
    for _ in range(100):  # the resident copy loads in the background; searches stream until it is there
        if 'ragged_resident_bytes{form="f32 in RAM"}' in text:
            break
        client.post("/search", json={"query": "tart"})
        time.sleep(0.05)
        text = client.get("/metrics").text
    assert metric(text, 'ragged_resident_bytes{form="f32 in RAM"}') > 0
    assert 'ragged_resident_form{chosen="f32 in RAM",form="f32 in RAM",loading="",reason="needs' in text
    assert 'ragged_oom_recoveries_total{strategy="reduce_batch"}' in text and "ragged_device_memory_bytes" in text


def test_the_web_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and "<form id=\"search\"" in page.text
    assert "http://" not in page.text and "https://" not in page.text  # no CDN: works offline


def test_heatmap_for_a_colpali_page(client: TestClient) -> None:
    hit = client.post("/search", json={"query": "quarterly revenue", "k": 1, "mode": "vision"}).json()["hits"][0]
    response = client.post("/heatmap", json={"doc_hash": hit["doc_hash"], "page": hit["page"],
                                             "query": "quarterly revenue"})
    assert response.status_code == 200
    body = response.json()
    assert (body["rows"], body["cols"]) == (32, 32) and len(body["overall"]) == 1024
    assert all(0.0 <= v <= 1.0 for v in body["overall"]) and max(body["overall"]) > 0
    assert [w["text"] for w in body["words"]] == ["quarterly", "revenue"]  # words, not pieces; no prompt
    assert all(len(w["values"]) == 1024 for w in body["words"])
    assert abs(body["score"] - hit["score"]) < 1e-2  # the same MaxSim the search gave
    bad = client.post("/heatmap", json={"doc_hash": hit["doc_hash"], "page": 99, "query": "x"})
    assert bad.status_code == 404


def test_token_guards_everything_but_health(service: SearchService) -> None:
    with TestClient(create_app(service, token=TOKEN), raise_server_exceptions=False,
                    base_url="http://127.0.0.1") as guarded:
        assert guarded.get("/health").status_code == 200
        assert guarded.post("/search", json={"query": "tart"}).status_code == 401
        wrong = guarded.post("/search", json={"query": "tart"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and "token" in wrong.json()["error"]
        right = guarded.post("/search", json={"query": "tart"}, headers={"Authorization": f"Bearer {TOKEN}"})
        assert right.status_code == 200
        assert guarded.get("/metrics").status_code == 401 and guarded.get("/ready").status_code == 401
        page = guarded.get("/", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/login"
        assert guarded.post("/login", data={"token": "nope"}).status_code == 401
        signed = guarded.post("/login", data={"token": TOKEN}, follow_redirects=False)
        assert signed.status_code == 303 and "samesite=strict" in signed.headers["set-cookie"].lower()
        assert guarded.post("/search", json={"query": "tart"}).status_code == 200  # the cookie now


def test_readiness_tells_the_truth_when_the_model_cannot_load(tmp_path: Path, model_cache: Path) -> None:
    import shutil

    from ragged.embeddings.presets import ensure_preset
    from tests.inputs import EXAMPLES
    from tests.serve.conftest import build_index

    model = tmp_path / "my-model"
    shutil.copytree(ensure_preset("tiny-colpali", model_cache), model)
    index = build_index(tmp_path / "index", model_cache, model=str(model), paths=[EXAMPLES / "recipe-card.pdf"])
    (model / "model.safetensors").write_bytes(b"broken")
    broken = SearchService(ServiceConfig(index_dir=index, cache_dir=model_cache, idle_unload_s=None))
    broken.start()
    try:
        with TestClient(create_app(broken), raise_server_exceptions=False,
                        base_url="http://127.0.0.1") as test_client:
            assert test_client.get("/health").status_code == 200  # the process is up...
            ready = test_client.get("/ready")
            assert ready.status_code == 503 and "the model failed to load" in ready.json()["reason"]  # ...not ready
            failed = test_client.post("/search", json={"query": "tart"})
            assert failed.status_code == 503 and "could not be loaded" in failed.json()["error"]
            keyword = test_client.post("/search", json={"query": "tart", "mode": "keyword"})  # needs no model
            assert keyword.status_code == 200 and keyword.json()["hits"]
    finally:
        broken.close()


def test_pages_render_concurrently_without_crashing_the_process(tmp_path: Path) -> None:
    """PDFium is not thread-safe: page requests run on a thread pool while an
    ingest may render in another thread; every call into it is serialised."""
    import threading

    from ragged.ingest.documents import inspect, render_pages
    from ragged.serve.pages import render
    from tests.inputs import EXAMPLES

    pdfs = sorted(EXAMPLES.glob("*.pdf"))
    sizes: list[tuple[int, int]] = []
    failures: list[BaseException] = []

    def work(n: int) -> None:
        try:
            for round_ in range(6):
                path = pdfs[(n + round_) % len(pdfs)]
                if n % 3 == 0:
                    sizes.extend(p.image.size for p in render_pages(inspect(path), 72))
                else:
                    sizes.append(render(path, 1, 160 + 40 * n).size)
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures and not any(t.is_alive() for t in threads)
    assert len(sizes) >= 8 * 6 and all(w > 0 and h > 0 for w, h in sizes)
