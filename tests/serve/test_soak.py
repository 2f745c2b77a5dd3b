"""The server beside a live writer (issue 18): an ingest, a prune and a
text-side upgrade run while clients search in every mode. Every answer must
match the index as it was at some commit (replayed from the catalog log),
nothing answers 5xx, and the text side added later is picked up without a
restart."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from examples.make_examples import text_pdf
from ragged.index.catalog_log import CATALOG_DIR, decode, generations
from ragged.index.catalog_state import CatalogState
from tests.inputs import EXAMPLES
from tests.serve.conftest import Server, http

pytestmark = pytest.mark.slow

MODES = ("vision", "hybrid", "text", "keyword", "auto")
QUERIES = ("quarterly revenue", "lemon tart", "tenancy deposit", "glacier survey", "\"harbour lights\"")
CLIENTS, MAX_REQUESTS = 3, 60  # per client: bounded in count, and stopped when the writer is done
NEW_DOCS = {
    "glacier.pdf": [["Glacier survey, summer field season", "Ice thickness measured at twelve stakes."]],
    "harbour.pdf": [["Harbour lights maintenance log", "Lamp replaced on the north pier."],
                    ["Harbour dues for the year", "Fishing boats pay half."]],
    "orchard.pdf": [["Orchard pruning plan", "Apple trees first, then the pears."]],
}


def ragged(model_cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    done = subprocess.run([sys.executable, "-m", "ragged", *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def snapshots(index: Path) -> list[dict[tuple[str, int], str]]:
    """Every state the index had after a commit: {(doc_hash, page): path},
    replayed from the oldest snapshot kept and every log line after it."""
    folder = index / CATALOG_DIR
    gens = generations(folder)
    raw = (folder / f"base-{gens[0]:08d}.json").read_bytes()
    record = decode(raw if raw.endswith(b"\n") else raw + b"\n")
    state = CatalogState.from_json(record if record is not None else json.loads(raw))
    states = [_pages(state)]
    for generation in gens:
        log = folder / f"log-{generation:08d}.jsonl"
        if not log.exists():
            continue
        for line in log.read_bytes().splitlines(keepends=True):
            entry = decode(line)
            if entry is not None:
                state.apply(entry)
                states.append(_pages(state))
    return states


def _pages(state: CatalogState) -> dict[tuple[str, int], str]:
    return {(p.doc_hash, p.page): p.path for p in state.catalog().pages}


def matches_a_snapshot(answer: dict[str, Any], states: list[dict[tuple[str, int], str]]) -> bool:
    """The answer's page count and every hit (page and path) fit one committed state."""
    hits = {(h["doc_hash"], h["page"]): h["path"] for h in answer["hits"]}
    return any(len(state) == answer["pages_searched"] and all(state.get(key) == path for key, path in hits.items())
               for state in states)


def test_answers_stay_whole_while_the_index_changes(tmp_path: Path, model_cache: Path) -> None:
    docs = tmp_path / "docs"
    shutil.copytree(EXAMPLES, docs, ignore=shutil.ignore_patterns("*.py"))
    index = tmp_path / "index"
    ragged(model_cache, "ingest", str(docs), "--model", "tiny-colpali", "--dpi", "72", "--text-model", "none",
           "--index", str(index))
    server = Server(index, model_cache, "--idle-unload", "0")
    answers: list[tuple[str, int, Any]] = []
    writer_done = threading.Event()
    try:
        server.wait_ready()

        def client(seed: int) -> None:
            plan = itertools.islice(itertools.cycle(itertools.product(MODES, QUERIES)), seed, None)
            for n, (mode, query) in enumerate(plan):
                if n >= MAX_REQUESTS or (writer_done.is_set() and n >= 10):
                    return
                status, body = http(server.url + "/search", {"query": query, "k": 5, "mode": mode}, timeout=120)
                answers.append((mode, status, body))

        clients = [threading.Thread(target=client, args=(7 * i,)) for i in range(CLIENTS)]
        for thread in clients:
            thread.start()
        try:
            for name, pages in NEW_DOCS.items():  # an ingest of new documents, still without text
                (docs / name).write_bytes(text_pdf(pages))
            ragged(model_cache, "ingest", str(docs), "--dpi", "72", "--text-model", "none", "--index", str(index))
            (docs / "recipe-card.pdf").unlink()  # a prune
            ragged(model_cache, "ingest", str(docs), "--prune", "--dpi", "72", "--text-model", "none",
                   "--index", str(index))
            ragged(model_cache, "ingest", str(docs), "--dpi", "72", "--index", str(index))  # the text side, later
        finally:
            writer_done.set()
            for thread in clients:
                thread.join(timeout=600)
        final_pages = sum(len(p) for p in NEW_DOCS.values()) + 6 - 1  # the examples' 6 pages, less the recipe card
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the server picks the last commits up by itself
            ready = http(server.url + "/ready")[1]
            if ready.get("pages") == final_pages and ready.get("text"):
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the server never caught up: {ready}")
        for mode in MODES:
            status, body = http(server.url + "/search", {"query": "harbour dues", "k": 3, "mode": mode})
            answers.append((mode, status, body))
            assert status == 200 and body["pages_searched"] == final_pages and body["hits"], (mode, body)
        text_hit = http(server.url + "/search", {"query": "harbour dues", "k": 1, "mode": "keyword"})[1]["hits"][0]
        assert text_hit["path"].endswith("harbour.pdf") and text_hit["page"] == 2  # the text side, in use
    finally:
        code, stderr = server.stop()
    states = snapshots(index)
    assert len(answers) >= 30
    server_errors = [(mode, status, body) for mode, status, body in answers if status >= 500]
    assert not server_errors, server_errors[:3]
    for mode, status, body in answers:
        if status == 400:  # a text mode before the text side exists: the request's fault, not the server's
            assert mode in ("text", "keyword", "hybrid") and "needs page text" in body["error"], (mode, body)
            continue
        assert status == 200, (mode, status, body)
        assert matches_a_snapshot(body, states), (mode, body["pages_searched"], body["hits"])
        scores = [h["score"] for h in body["hits"]]
        assert scores == sorted(scores, reverse=True)
    assert code == 0 and "Traceback" not in stderr
