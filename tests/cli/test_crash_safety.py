"""``kill -9`` during ingest, then ingest again: every page exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

from ragged.index.segments import scan
from ragged.index.store import IndexStore

DOCS, PAGES = 6, 24

pytestmark = pytest.mark.slow


def make_pdfs(folder: Path) -> None:
    folder.mkdir()
    for d in range(DOCS):
        pages = []
        for p in range(PAGES):
            img = Image.new("RGB", (200, 260), "white")
            ImageDraw.Draw(img).text((10, 10), f"doc {d} page {p}", fill="black")
            pages.append(img)
        pages[0].save(folder / f"doc{d}.pdf", save_all=True, append_images=pages[1:])


# Loaded by the child through PYTHONPATH: once ragged's store is imported, its
# commit step first announces itself in a marker file, then stalls, so the
# test can kill the child after a segment is written and before the commit.
STALL_BEFORE_COMMIT = """
import importlib.abc, importlib.machinery, os, sys, time

class _Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "ragged.index.store":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            real = module.IndexStore._rows

            def stalled(self, *args, **kwargs):
                open(os.environ["RAGGED_TEST_MARKER"], "w").close()
                time.sleep(600)
                return real(self, *args, **kwargs)

            module.IndexStore._rows = stalled

        spec.loader.exec_module = exec_module
        return spec

sys.meta_path.insert(0, _Hook())
"""


def start_ingest(folder: Path, index: Path, cache: Path, hook: Path | None = None) -> subprocess.Popen[bytes]:
    env = {**os.environ, "RAGGED_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    if hook is not None:
        env["PYTHONPATH"] = f"{hook}{os.pathsep}{env.get('PYTHONPATH', '')}"
        env["RAGGED_TEST_MARKER"] = str(hook / "stalled")
    return subprocess.Popen(
        [sys.executable, "-m", "ragged", "ingest", str(folder), "--model", "tiny-colpali", "--index", str(index),
         "--dpi", "72", "--json"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def stored(index: Path) -> Counter[tuple[str, int]]:
    if IndexStore.read_meta(index) is None:
        return Counter()
    return Counter((p.doc_hash, p.page) for p in IndexStore.open(index).catalog().pages)


def assert_whole_documents(pages: Counter[tuple[str, int]]) -> None:
    assert all(n == 1 for n in pages.values()), "a page is stored twice"
    per_doc = Counter(doc for doc, _ in pages)
    assert all(n == PAGES for n in per_doc.values()), f"half-written document visible: {per_doc}"


def wait_for(predicate, timeout: float) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def finish(folder: Path, index: Path, cache: Path) -> None:
    proc = start_ingest(folder, index, cache)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr.decode()
    pages = stored(index)
    assert_whole_documents(pages)
    assert len(pages) == DOCS * PAGES


def test_kill_after_first_commit(tmp_path: Path, model_cache: Path) -> None:
    make_pdfs(tmp_path / "docs")
    index = tmp_path / "index"
    proc = start_ingest(tmp_path / "docs", index, model_cache)
    try:
        assert wait_for(lambda: len(stored(index)) > 0, timeout=240), "nothing was ever committed"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    at_kill = stored(index)
    assert_whole_documents(at_kill)
    assert 0 < len(at_kill) < DOCS * PAGES, "the run finished before the kill: make it longer"
    finish(tmp_path / "docs", index, model_cache)


def test_kill_between_segment_and_commit(tmp_path: Path, model_cache: Path) -> None:
    make_pdfs(tmp_path / "docs")
    index = tmp_path / "index"
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(STALL_BEFORE_COMMIT)
    proc = start_ingest(tmp_path / "docs", index, model_cache, hook)
    try:
        assert wait_for(lambda: (hook / "stalled").exists(), timeout=240), "the first commit was never reached"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stored(index) == Counter()  # nothing committed...
    blocks = list(scan(index / "segments", 128))
    assert len(blocks) == 1  # ...but the first document's block was written
    finish(tmp_path / "docs", index, model_cache)
    blocks = list(scan(index / "segments", 128))  # the uncommitted block was cut off: each document once
    assert sorted(b.doc_hash for b in blocks) == sorted(IndexStore.open(index).known_hashes())
