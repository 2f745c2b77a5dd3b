"""Fixtures for the service: a sample index, an in-process app, a real server."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ragged.index.store import IndexStore
from ragged.ingest.pipeline import IngestOptions, ingest
from tests.inputs import EXAMPLES


def build_index(folder: Path, model_cache: Path, model: str = "tiny-colpali", paths: list[Path] | None = None) -> Path:
    """An index of ``paths`` (default: a copy of the sample PDFs, which tests may edit)."""
    if paths is None:
        docs = folder.parent / "docs"
        shutil.copytree(EXAMPLES, docs, ignore=shutil.ignore_patterns("*.py"))
        paths = [docs]
    report = ingest(paths, IngestOptions(index_dir=folder, model=model, dpi=72, cache_dir=model_cache))
    assert report.pages_added > 0
    return folder


@pytest.fixture(scope="module")
def sample_index(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    return build_index(tmp_path_factory.mktemp("serve") / "index", model_cache)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(url: str, body: dict[str, Any] | None = None, token: str | None = None,
         timeout: float = 60) -> tuple[int, Any]:
    """(status, JSON body or raw bytes) of one request."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="GET" if body is None else "POST")
    request.add_header("Content-Type", "application/json")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw, status, kind = response.read(), response.status, response.headers.get("content-type", "")
    except urllib.error.HTTPError as exc:
        raw, status, kind = exc.read(), exc.code, exc.headers.get("content-type", "")
    return status, json.loads(raw) if "json" in kind else raw


def metric(text: str, name: str) -> float:
    """One sample's value in a Prometheus exposition (the line must be there)."""
    match = re.search(rf"^{re.escape(name)} ([0-9.e+]+)$", text, re.MULTILINE)
    assert match, name
    return float(match.group(1))


class Server:
    """A real ``ragged serve`` process on a free loopback port."""

    def __init__(self, index: Path, model_cache: Path, *args: str, port: int | None = None) -> None:
        self.index, self.port = index, port or free_port()
        self.stdout = ""
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1",
               "RAGGED_CONFIG": "/nonexistent"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ragged", "serve", "--index", str(index), "--port", str(self.port), *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError(f"the server exited: {self.proc.communicate()}")
            try:
                if http(self.url + "/ready", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError("the server never became ready")

    def stop_when_exited(self, timeout: float = 60) -> tuple[int, str]:
        """(exit status, stderr) of a server expected to refuse to start."""
        _, stderr = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, stderr

    def stop(self) -> tuple[int, str]:
        """(exit status, stderr); what it printed on stdout is kept in ``stdout``."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.stdout, stderr = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.stdout, stderr = self.proc.communicate()
        return self.proc.returncode, stderr


@pytest.fixture(scope="module")
def server(sample_index: Path, model_cache: Path) -> Iterator[Server]:
    running = Server(sample_index, model_cache, "--idle-unload", "0")
    try:
        running.wait_ready()
        yield running
    finally:
        running.stop()


def numpy_hits(index: Path, query: np.ndarray, k: int) -> list[tuple[str, int, float]]:
    """The oracle for served hits: plain NumPy MaxSim in float64 over every
    stored page, written here (it shares no code with the server's kernel or
    its ranking): (doc_hash, page, score), best first."""
    store = IndexStore.open(index)
    q = np.asarray(query, dtype=np.float64)  # (tokens, dim)
    scored = []
    for record in store.catalog().pages:
        page = np.asarray(store.page_vectors(record.doc_hash, record.page), dtype=np.float64)  # (n, dim)
        scored.append((float((q @ page.T).max(axis=1).sum()), record.doc_hash, record.page))
    scored.sort(key=lambda t: -t[0])
    return [(h, p, score) for score, h, p in scored[:k]]
