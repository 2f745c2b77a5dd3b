"""Ingest on a local Ray cluster of CPU workers: same index as one process,
workers and drivers killed mid-run, OOM inside a worker, Ray missing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from ragged.errors import ConfigurationError
from ragged.gpu.types import DeviceType
from ragged.index.store import IndexStore
from ragged.ingest.distributed import ScaleOptions
from ragged.ingest.documents import file_sha256, inspect
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.worker import EmbedWorker
from tests.inputs import EXAMPLES, blank_pdf

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[None]:
    """One local Ray cluster for the module (starting one costs seconds)."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR",
             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": str(Path.cwd())}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("scale") / "docs"
    folder.mkdir()
    for name in ("annual-report.pdf", "rental-contract.pdf", "recipe-card.pdf"):
        (folder / name).write_bytes((EXAMPLES / name).read_bytes())
    for n in range(5):
        (folder / f"extra{n}.pdf").write_bytes(blank_pdf(4, 300, 400, text=f"extra document {n}"))
    return folder


def options(index: Path, model_cache: Path, scale: ScaleOptions | None) -> IngestOptions:
    return IngestOptions(index_dir=index, model="tiny-colpali", dpi=72, cache_dir=model_cache, scale=scale)


def stored(index: Path) -> Counter[tuple[str, int]]:
    return Counter((p.doc_hash, p.page) for p in IndexStore.open(index).catalog().pages)


def vectors(index: Path) -> dict[tuple[str, int], np.ndarray]:
    store = IndexStore.open(index)
    return {(p.doc_hash, p.page): np.asarray(store.page_vectors(p.doc_hash, p.page), dtype=np.float32)
            for p in store.catalog().pages}


def text_by_page(index: Path) -> dict[tuple[str, int], np.ndarray]:
    """Each page's passage vectors, keyed by (document, page)."""
    store = IndexStore.open(index)
    pages = store.catalog().pages
    owners, values = store.text_vectors()
    return {(pages[n].doc_hash, pages[n].page): values[owners == n] for n in np.unique(owners)}


@pytest.fixture(scope="module")
def single(corpus: Path, model_cache: Path) -> Path:
    index = corpus.parent / "single"
    report = ingest([corpus], options(index, model_cache, None))
    assert report.pages_added == 26
    return index


def test_two_workers_build_the_same_index_as_one_process(cluster: None, corpus: Path, model_cache: Path,
                                                         single: Path, tmp_path: Path) -> None:
    index = tmp_path / "two"
    report = ingest([corpus], options(index, model_cache, ScaleOptions(workers=2, batch_pages=4)))
    assert (report.documents_added, report.pages_added) == (8, 26)
    assert sorted(w.worker for w in report.workers) == ["w0", "w1"]
    assert all(w.pages > 0 for w in report.workers) and sum(w.pages for w in report.workers) == 26  # both worked
    assert report.text.items > 0 and report.text.seconds > 0 and report.text_model == "all-MiniLM-L6-v2"
    ours, theirs = vectors(index), vectors(single)
    assert ours.keys() == theirs.keys()
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key], atol=1e-3)
    assert text_by_page(index).keys() == text_by_page(single).keys()
    for key, value in text_by_page(index).items():
        np.testing.assert_allclose(value, text_by_page(single)[key], atol=1e-3)


@pytest.mark.parametrize("workers", [2, 1])  # one: the lost batch goes back to the same worker, restarted
def test_a_worker_killed_mid_run_loses_nothing(cluster: None, corpus: Path, model_cache: Path,
                                               tmp_path: Path, workers: int, capfd: pytest.CaptureFixture[str]) -> None:
    pids: dict[str, int] = {}
    sent: list[str] = []

    def events(kind: str, data: object) -> None:
        if kind == "workers":
            pids.update(dict(data))  # type: ignore[arg-type]
        elif kind == "batch":
            sent.append(str(data))
            if len(sent) == 3:  # the third batch is in flight on this worker: kill it
                os.kill(pids[str(data)], signal.SIGKILL)

    index = tmp_path / "killed"
    report = ingest([corpus], options(index, model_cache, ScaleOptions(workers=workers, batch_pages=2,
                                                                       events=events)))
    assert len(sent) > 13  # the lost batch was sent again
    pages = stored(index)
    assert len(pages) == 26 and all(n == 1 for n in pages.values())
    assert report.pages_added == 26 and not report.problems
    time.sleep(2)  # Ray's error listener prints from its own thread
    out = capfd.readouterr().out
    assert "worker died" not in out.lower() and "\x1b[" not in out  # Ray's raw raylet lines stay off stdout


class OOMWorker(EmbedWorker):
    """A worker whose device runs out of memory for batches of two pages or more."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        import torch

        model = self.embedder.model
        forward = model.forward

        def limited(*a: object, **kw: torch.Tensor) -> object:
            if kw["input_ids"].shape[0] >= 2:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
            return forward(*a, **kw)

        model.forward = limited


def test_a_worker_out_of_memory_recovers_on_its_own(cluster: None, corpus: Path, model_cache: Path,
                                                    single: Path, tmp_path: Path) -> None:
    index = tmp_path / "oom"
    report = ingest([corpus], options(index, model_cache, ScaleOptions(workers=2, worker_cls=OOMWorker)))
    assert report.pages_added == 26 and not report.problems
    assert report.vision.ooms >= 2 and all(w.vision.ooms >= 1 for w in report.workers if w.pages)
    assert max(report.vision.batch_sizes) == 1
    ours, theirs = vectors(index), vectors(single)
    for key, value in ours.items():
        np.testing.assert_allclose(value, theirs[key], atol=1e-3)


def committed(index: Path) -> bool:
    """True once a document's commit (a record in the catalog log) is on disk."""
    return IndexStore.read_meta(index) is not None and bool(IndexStore.open(index).catalog().pages)


def test_the_driver_killed_mid_run_then_rerun(corpus: Path, model_cache: Path, tmp_path: Path) -> None:
    """kill -9 of the whole driver process group (its local Ray cluster with it)."""
    index = tmp_path / "driver"
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent",
           "RAY_ADDRESS": "", "PYTHONPATH": str(Path.cwd())}
    command = [sys.executable, "-m", "ragged", "ingest", str(corpus), "--model", "tiny-colpali", "--dpi", "72",
               "--index", str(index), "--workers", "2", "--json"]
    proc = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and not committed(index):
            time.sleep(0.2)
        assert committed(index), "nothing was committed"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    at_kill = stored(index)
    assert all(n == 1 for n in at_kill.values())
    expected = {file_sha256(f): inspect(f).pages for f in corpus.iterdir()}
    assert all(count == expected[doc] for doc, count in Counter(d for d, _ in at_kill).items())  # whole documents
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, start_new_session=True)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    pages = stored(index)
    assert len(pages) == 26 and all(n == 1 for n in pages.values())


def test_workers_take_the_device_kind_asked_for() -> None:
    from ragged.ingest.distributed import worker_count, worker_device

    class Cluster:
        def cluster_resources(self) -> dict[str, float]:
            return {"CPU": 32.0, "GPU": 4.0}

    assert [worker_device(h) for h in (None, "auto", "cpu", "cuda", "cuda:2", "xpu")] == [
        None, None, "cpu", "cuda", "cuda", "xpu"]
    assert worker_count(Cluster(), None) == (4, "GPU")  # one per card
    assert worker_count(Cluster(), None, DeviceType.CUDA) == (4, "GPU")
    assert worker_count(Cluster(), None, DeviceType.CPU) == (1, None)  # --device cpu: no card taken
    assert worker_count(Cluster(), 3, DeviceType.CPU) == (3, None)
    assert worker_count(Cluster(), None, DeviceType.MPS) == (1, None)  # a kind Ray has no resource for
    with pytest.raises(ConfigurationError, match="cluster has 4 GPU"):
        worker_count(Cluster(), 5)


def test_without_ray_the_cli_says_what_to_install(model_cache: Path, tmp_path: Path) -> None:
    code = ("import sys; sys.modules['ray'] = None\n"
            "from ragged.cli.main import run\n"
            f"sys.argv = ['ragged', 'ingest', {str(EXAMPLES)!r}, '--workers', '2', '--index', {str(tmp_path)!r}]\n"
            "run()")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and "pip install 'ragged[ray]'" in out.stderr and "Traceback" not in out.stderr


def test_a_ray_client_address_is_refused_before_anything_is_written(model_cache: Path, tmp_path: Path) -> None:
    """The driver must see the files and the index: Ray Client (ray://) would run it elsewhere."""
    out = subprocess.run([sys.executable, "-m", "ragged", "ingest", str(EXAMPLES), "--workers", "2",
                          "--ray-address", "ray://head:10001", "--model", "tiny-colpali",
                          "--index", str(tmp_path / "index")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 1 and "ray start --address" in out.stderr and "Traceback" not in out.stderr
    assert not committed(tmp_path / "index")
