"""A real ``ragged serve`` process: concurrency, the CLI through it, fresh
documents, idle unload, and a clean stop."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ragged.embeddings import ColPaliEmbedder
from tests.inputs import EXAMPLES, blank_pdf
from tests.serve.conftest import Server, build_index, free_port, http, metric, numpy_hits

pytestmark = pytest.mark.slow

WORDS = ["revenue", "tart", "lemon", "rent", "deposit", "quarter", "growth", "butter", "tenant", "sugar", "annual",
         "profit", "landlord", "oven", "margin", "lease"]


def cli(model_cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    return subprocess.run([sys.executable, "-m", "ragged", *args], env=env, capture_output=True, text=True,
                          timeout=300)


def test_32_concurrent_clients_each_get_their_own_hits(server: Server, sample_index: Path,
                                                       model_cache: Path) -> None:
    queries = [f"{WORDS[i % len(WORDS)]} {WORDS[(i * 7 + 3) % len(WORDS)]}" for i in range(32)]
    with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
        serial = {q: numpy_hits(sample_index, emb.embed_queries([q])[0], 4) for q in queries}
    before = http(server.url + "/metrics")[1].decode()
    start = threading.Barrier(32)

    def ask(query: str) -> tuple[str, dict[str, object]]:
        start.wait(timeout=30)
        status, body = http(server.url + "/search", {"query": query, "k": 4, "mode": "vision"})
        assert status == 200, body
        return query, body

    with ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(ask, queries))
    for query, body in answers:
        assert body["query"] == query
        want = serial[query]
        got = body["hits"]
        assert len(got) == 4
        for hit, (_, _, score) in zip(got, want, strict=True):  # same pages, same order, unless two scores tie
            assert abs(hit["score"] - score) < 1e-3, (query, got, want)
            tied = {(h, p) for h, p, s in want if abs(s - score) < 1e-3}
            assert (hit["doc_hash"], hit["page"]) in tied, (query, got, want)
    after = http(server.url + "/metrics")[1].decode()
    passes = metric(after, "ragged_query_batch_size_count") - metric(before, "ragged_query_batch_size_count")
    queries_done = metric(after, "ragged_query_batch_size_sum") - metric(before, "ragged_query_batch_size_sum")
    assert queries_done == 32 and passes < 32  # queries that arrived together shared passes


def test_the_cli_searches_through_the_server(server: Server, sample_index: Path, model_cache: Path) -> None:
    via = cli(model_cache, "search", "lemon tart", "--index", str(sample_index), "-k", "3", "--json")
    assert via.returncode == 0, via.stderr
    remote = json.loads(via.stdout)
    assert remote["device"] == f"cpu via {server.url}"
    record = json.loads((sample_index / "serve.json").read_text())
    assert record["url"] == server.url and record["pid"] == server.proc.pid
    moved = sample_index.parent / "copy"
    import shutil

    shutil.copytree(sample_index, moved, ignore=shutil.ignore_patterns("serve.json"))
    local = json.loads(cli(model_cache, "search", "lemon tart", "--index", str(moved), "-k", "3", "--json").stdout)
    assert local["device"] == "cpu"
    assert [(h["doc_hash"], h["page"]) for h in remote["hits"]] == [(h["doc_hash"], h["page"]) for h in local["hits"]]
    (moved / "serve.json").write_text(json.dumps({"pid": 999_999, "url": server.url, "token_required": False,
                                                  "started": 0.0}))
    stale = json.loads(cli(model_cache, "search", "lemon tart", "--index", str(moved), "-k", "3", "--json").stdout)
    assert stale["device"] == "cpu"  # a record of a dead process is ignored


def test_documents_committed_while_serving_become_searchable(server: Server, sample_index: Path,
                                                              model_cache: Path, tmp_path: Path) -> None:
    new = tmp_path / "fresh.pdf"
    new.write_bytes(blank_pdf(2, 300, 400, text="fresh"))
    done = cli(model_cache, "ingest", str(new), "--index", str(sample_index), "--dpi", "72")
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 20
    pages = 0
    while time.monotonic() < deadline:
        pages = http(server.url + "/ready")[1]["pages"]
        if pages == 8:
            break
        time.sleep(0.25)
    assert pages == 8
    hits = http(server.url + "/search", {"query": "fresh", "k": 8})[1]["hits"]
    assert sum(h["path"] == str(new) for h in hits) == 2


def test_one_server_per_index_and_a_taken_port_is_one_line(server: Server, sample_index: Path,
                                                           model_cache: Path) -> None:
    second = Server(sample_index, model_cache, "--idle-unload", "0")
    code, stderr = second.stop_when_exited()
    assert code == 1 and "is already served at " + server.url in stderr and "Traceback" not in stderr
    other = build_index(sample_index.parent.parent / "other-index", model_cache, paths=[EXAMPLES / "recipe-card.pdf"])
    (other / "serve.json").write_text(json.dumps({"pid": 1, "url": f"http://127.0.0.1:{free_port()}",
                                                  "token_required": False, "started": 0.0}))
    clash = Server(other, model_cache, "--idle-unload", "0", port=server.port)  # a live pid, but no server
    code, stderr = clash.stop_when_exited()
    assert code == 1 and f"port {server.port} is in use" in stderr.lower() and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1  # the port, not the stale record, stopped it
    assert http(server.url + "/ready")[0] == 200  # the running server is untouched


def test_idle_unload_releases_and_reloads(tmp_path: Path, model_cache: Path) -> None:
    index = build_index(tmp_path / "index", model_cache, paths=[EXAMPLES / "recipe-card.pdf"])
    idle = Server(index, model_cache, "--idle-unload", "1")
    try:
        idle.wait_ready()
        assert http(idle.url + "/search", {"query": "tart"})[0] == 200
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = http(idle.url + "/metrics")[1].decode()
            if metric(text, 'ragged_model_events_total{event="idle_unload"}') >= 1:
                break
            time.sleep(0.2)
        assert metric(text, "ragged_model_loaded") == 0
        assert metric(text, 'ragged_model_events_total{event="idle_unload"}') >= 1
        again = http(idle.url + "/search", {"query": "tart"})[1]
        assert again["model_load_ms"] is not None and again["model_load_ms"] > 0  # said so in its timing
    finally:
        code, _ = idle.stop()
    assert code == 0


def test_sigterm_finishes_requests_in_flight_then_exits_cleanly(tmp_path: Path, model_cache: Path) -> None:
    index = build_index(tmp_path / "index", model_cache, paths=[EXAMPLES / "recipe-card.pdf"])
    running = Server(index, model_cache, "--idle-unload", "0")
    running.wait_ready()
    assert (index / "serve.json").is_file()
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(http, running.url + "/search", {"queries": ["tart " * 50] * 4, "k": 1})
                   for _ in range(4)]
        time.sleep(0.05)
        code, stderr = running.stop()
        answers = [f.result() for f in futures]
    assert code == 0, stderr
    assert "Traceback" not in stderr
    assert all(status == 200 for status, _ in answers)  # none dropped
    assert "4 answered" in running.stdout and "cut off" not in running.stdout  # and it says so
    assert not (index / "serve.json").exists()


def test_listening_beyond_loopback_needs_a_token(sample_index: Path, model_cache: Path) -> None:
    result = cli(model_cache, "serve", "--index", str(sample_index), "--host", "0.0.0.0", "--port", "0")
    assert result.returncode == 2 and "--token" in result.stderr and "Traceback" not in result.stderr
