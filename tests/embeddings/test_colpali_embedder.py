"""ColPaliEmbedder on the tiny presets, on the CPU (and on a fake card that
computes on the CPU, for placement and fallback)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ragged.embeddings import PRESETS, ColPaliEmbedder
from ragged.embeddings.colpali_embedder import PageVectors
from ragged.embeddings.cost import visual_tokens
from ragged.errors import (
    ConfigurationError,
    DeviceUnavailableError,
    ModelDoesNotFitError,
    ModelError,
    OutOfMemoryRecoveryError,
    UnknownModelError,
)
from ragged.gpu import BatchSizeConfig, DeviceInfo, DeviceManager, DeviceType, ItemFailure, Runtime
from ragged.gpu.batch_sizer import CPU_START_IDLE
from ragged.gpu.throughput import Why
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu, oom_message
from tests.pages import MIXED, make_pages

PAGES = make_pages(MIXED)


def close(a: list[np.ndarray], b: list[np.ndarray], rtol: float = 1e-3) -> bool:
    """Same shapes, and every value within rtol of the reference's scale."""
    return len(a) == len(b) and all(
        x.shape == y.shape and float(np.abs(x - y).max()) <= rtol * max(1e-6, float(np.abs(y).max()))
        for x, y in zip(a, b, strict=True)
    )


@pytest.fixture(scope="module", params=PRESETS)
def embedder(request: pytest.FixtureRequest, model_cache: Path) -> Iterator[ColPaliEmbedder]:
    with ColPaliEmbedder(request.param, cache_dir=model_cache) as emb:
        yield emb


@pytest.fixture(scope="module")
def reference(embedder: ColPaliEmbedder) -> list[np.ndarray]:
    """Each page embedded alone: the ground truth for batching."""
    return [embedder.embed_images([page])[0] for page in PAGES]


def inject_oom(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, at_batch: int) -> list[int]:
    """Make the model's forward raise torch's real OOM for batches >= at_batch."""
    seen: list[int] = []
    original = model.forward

    def forward(*args: object, **kwargs: torch.Tensor) -> object:
        batch = int(kwargs["input_ids"].shape[0])
        seen.append(batch)
        if batch >= at_batch:
            raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, batch * 2**30))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return seen


class TestEmbedding:
    def test_shapes_dtype_no_nan_and_order(self, embedder: ColPaliEmbedder, reference: list[np.ndarray]) -> None:
        out = embedder.embed_images(PAGES)
        assert len(out) == len(PAGES)
        for vectors in out:
            assert vectors.dtype == np.float32 and vectors.ndim == 2 and vectors.shape[1] == 128
            assert np.isfinite(vectors).all()
        assert close(out, reference)

    def test_padding_is_dropped(self, embedder: ColPaliEmbedder) -> None:
        """Token counts follow each page's own geometry, not the batch's longest."""
        out = embedder.embed_images(PAGES)
        estimates = visual_tokens(embedder.processor, PAGES)
        assert [v.shape[0] for v in out] == [e + embedder.prompt_tokens for e in estimates]
        assert embedder.prompt_tokens > 0

    def test_patch_grids_where_the_model_has_one(self, embedder: ColPaliEmbedder) -> None:
        pages = embedder.embed_pages(PAGES[:2]).results
        grids = [p.grid for p in pages if isinstance(p, PageVectors)]
        if embedder.source.family.name == "colmodernvbert":  # tiles with separators: no single grid
            assert grids == [None, None]
            return
        for page, grid, (w, h) in zip(pages, grids, MIXED[:2], strict=True):
            assert grid is not None and isinstance(page, PageVectors)
            assert grid.start + grid.rows * grid.cols <= page.vectors.shape[0]
            if embedder.source.family.name == "colpali":
                assert (grid.rows, grid.cols) == (32, 32)
            else:  # ColQwen2 keeps the page's shape: taller pages have more rows
                assert (grid.rows > grid.cols) if h > w else (grid.rows < grid.cols) if w > h else \
                    grid.rows == grid.cols

    @pytest.mark.parametrize("prefetch", [None, True], ids=["in-line", "prefetched"])
    def test_fixed_batches_match_single_pages_with_and_without_prefetch(
            self, embedder: ColPaliEmbedder, model_cache: Path, reference: list[np.ndarray],
            monkeypatch: pytest.MonkeyPatch, prefetch: bool | None) -> None:
        """The same pages either way; with prefetch every batch is prepared in
        the worker thread (by default, on the CPU, in the caller's)."""
        with ColPaliEmbedder(embedder.model_name, cache_dir=model_cache, batch_size=3,
                             enable_adaptive_batching=False, prefetch=prefetch) as fixed:
            threads: list[str] = []
            real = fixed.processor.process_images

            def process_images(images: list[object]) -> object:
                threads.append(threading.current_thread().name)
                return real(images)

            monkeypatch.setattr(fixed.processor, "process_images", process_images)
            run = fixed.embed_pages(PAGES)
        assert close([r.vectors for r in run.values()], reference)
        assert run.report.batch_sizes == [3, 3, 2] and run.report.prepared_items == len(PAGES)
        preparer = "ragged-prepare" if prefetch else "MainThread"
        assert len(threads) == 3 and all(name.startswith(preparer) for name in threads), threads

    def test_oom_in_forward_loses_nothing(self, embedder: ColPaliEmbedder, reference: list[np.ndarray],
                                          model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        # A runtime of its own: a fresh sizer that starts at 4 pages, and a fresh OOM engine.
        with Runtime(batch_config=BatchSizeConfig(initial_batch_size=4)) as runtime, \
                ColPaliEmbedder(embedder.model_name, cache_dir=model_cache, runtime=runtime) as fresh:
            seen = inject_oom(monkeypatch, fresh.model, at_batch=3)
            run = fresh.embed_pages(PAGES)
        assert close([r.vectors for r in run.values()], reference)
        report = run.report
        assert report.ooms >= 1 and report.recoveries["reduce_batch"] == report.ooms
        assert sum(report.batch_sizes) == len(PAGES) and max(report.batch_sizes) <= 2
        assert seen[:2] == [4, 2]  # the failed 4 is split in halves
        for n, size in enumerate(seen):
            if size >= 3:  # an OOM: nothing later may be as large
                assert all(later < size for later in seen[n + 1 :])

    def test_queries_and_exact_scores(self, embedder: ColPaliEmbedder) -> None:
        queries = embedder.embed_queries(["quarterly revenue", "which page has the table?"])
        pages = embedder.embed_images(PAGES[:3])
        assert [q.shape[1] for q in queries] == [128, 128]
        scores = embedder.score(queries, pages)
        manual = np.array([[float((q @ p.T).max(axis=1).sum()) for p in pages] for q in queries])
        assert scores.shape == (2, 3)
        np.testing.assert_allclose(scores, manual, rtol=1e-4)

    def test_report(self, embedder: ColPaliEmbedder) -> None:
        report = embedder.embed_pages(PAGES).report
        assert report.device == "cpu" and report.dtype == "float32" and report.items == len(PAGES)
        assert sum(report.batch_sizes) == len(PAGES) and report.items_per_second > 0
        assert report.model_bytes > 0 and report.placement_note is None
        assert report.compute_seconds > 0 and report.prepare_seconds > 0
        assert len(report.batch_peaks) == len(report.batch_sizes)
        assert report.to_dict()["items_per_second"] > 0


def test_score_is_exact_when_every_similarity_is_negative() -> None:
    """Zero padding gave such a page a score of 0 instead of its true MaxSim."""
    from ragged.multivector.maxsim import maxsim_scores

    query = [np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)]
    pages = [np.array([[-1.0, -2.0]], dtype=np.float32), np.array([[-3.0, -1.0], [-2.0, -0.5], [-1.0, -4.0]],
                                                                   dtype=np.float32)]
    np.testing.assert_allclose(maxsim_scores(query, pages), [[-3.0, -1.5]])


class TestBehaviour:
    def test_batch_size_caps_adaptive_batches(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, batch_size=3) as emb:
            assert max(emb.embed_pages(PAGES * 2).report.batch_sizes) <= 3

    def test_sizer_learns_across_calls(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            sizer = emb.batch_sizer
            assert sizer is not None
            first = emb.embed_pages(PAGES).report
            assert first.batch_sizes[0] == min(CPU_START_IDLE, len(PAGES))  # the CPU's first guess, cores free
            second = emb.embed_pages(PAGES).report
            assert emb.batch_sizer is sizer
            assert len(sizer.measurements) == len(first.batch_sizes) + len(second.batch_sizes)
            record = sizer.record()
            # One search over both calls: started once, its batches counted on.
            assert [c.why for c in record.chosen].count(Why.START) == 1
            assert record.batches == len(first.batch_sizes) + len(second.batch_sizes)

    def test_persistent_oom_on_cpu_is_reported_not_crashed(self, model_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            inject_oom(monkeypatch, emb.model, at_batch=1)
            with pytest.raises(OutOfMemoryRecoveryError, match="Out of memory on cpu"):
                emb.embed_images(PAGES[:2])
            results = emb.embed_pages(PAGES[:2]).results
            assert all(isinstance(r, ItemFailure) for r in results)

    def test_reading_the_device_never_reloads(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            first = emb.embed_images(PAGES[:2])
            old = emb.model
            assert emb.model_manager.unload(emb.job.key)
            assert next(old.parameters()).device.type == "meta"
            assert emb.device.label == "cpu" and emb.batch_sizer is not None and emb.memory_monitor is not None
            assert not emb.job.loaded  # none of those reads loaded it back
            assert close(emb.embed_images(PAGES[:2]), first)  # the next call does
            assert emb.job.loaded

    def test_long_queries_are_cut_with_a_notice(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache, max_query_tokens=16) as emb:
            run = emb.encode_queries(["quarterly revenue", "quarterly revenue " * 200])
            short, long = run.values()
            assert long.shape[0] <= 16 + 30  # the query's tokens plus the processor's own prompt
            assert run.notices_of(0) == () and len(run.notices_of(1)) == 1
            assert "cut to its first 16 tokens" in run.notices_of(1)[0]

    def test_page_view_size_keeps_what_the_model_sees(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache) as emb:
            w, h = emb.page_view_size(7500, 7500)
            assert w * h < 2_000_000  # a poster page is held at under 2 Mpx
            from PIL import Image

            big, small = Image.new("RGB", (7500, 7500)), Image.new("RGB", (w, h))
            assert visual_tokens(emb.processor, [big]) == visual_tokens(emb.processor, [small])

    def test_loads_a_saved_local_folder_offline(self, model_cache: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        source = ColPaliEmbedder("tiny-colmodernvbert", cache_dir=model_cache).source
        folder = tmp_path / "my-colmodernvbert"
        shutil.copytree(source.location, folder)
        with ColPaliEmbedder(str(folder), cache_dir=tmp_path / "empty-cache") as emb:
            assert emb.source.is_local and emb.source.family.name == "colmodernvbert"
            assert emb.embed_images(PAGES[:1])[0].shape[1] == 128
        assert not (tmp_path / "empty-cache" / "presets").exists()

    @pytest.mark.parametrize("name", ["not a model!", "", "./no/such/folder"])
    def test_unknown_models(self, name: str, model_cache: Path) -> None:
        with pytest.raises(UnknownModelError):
            ColPaliEmbedder(name, cache_dir=model_cache)

    def test_folder_without_config(self, tmp_path: Path) -> None:
        with pytest.raises(UnknownModelError, match=r"config\.json"):
            ColPaliEmbedder(str(tmp_path), cache_dir=tmp_path)

    def test_hub_id_offline_says_what_to_do(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        with pytest.raises(ModelError, match="preset"):
            ColPaliEmbedder("vidore/colpali-v1.3-hf", cache_dir=tmp_path)

    @pytest.mark.parametrize("size", [0, -2])
    def test_bad_batch_size(self, size: int, model_cache: Path) -> None:
        with pytest.raises(ConfigurationError):
            ColPaliEmbedder("tiny-colpali", cache_dir=model_cache, batch_size=size)

    def test_missing_device(self, model_cache: Path) -> None:
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        with pytest.raises(DeviceUnavailableError):
            ColPaliEmbedder("tiny-colpali", cache_dir=model_cache, device="cuda")

    def test_rejects_non_images(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            with pytest.raises(ConfigurationError, match="not a PIL image"):
                emb.embed_images(["page.png"])  # type: ignore[list-item]
            assert emb.embed_images([]) == [] and emb.embed_queries([]) == []


@pytest.fixture
def fake_card(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeBackend, DeviceManager]]:
    """A fake CUDA card whose tensors live on the CPU: placement and
    fallback run for real, with real models, without a GPU."""
    monkeypatch.setattr(DeviceInfo, "torch_device", property(lambda self: torch.device("cpu")))
    backend = FakeBackend(cards=[FakeCard(total=8 * GiB)])
    yield backend, DeviceManager([backend, fake_cpu()])


class TestPlacement:
    def test_explicit_device_is_honoured(self, fake_card: tuple[FakeBackend, DeviceManager],
                                         model_cache: Path) -> None:
        _, manager = fake_card
        with ColPaliEmbedder("tiny-colpali", "cuda:0", cache_dir=model_cache, runtime=Runtime(manager),
                             dtype=torch.float32) as emb:
            assert emb.device.label == "cuda:0" and emb.placement is not None and not emb.placement.fell_back
            assert emb.embed_pages(PAGES[:2]).report.device == "cuda:0"

    def test_explicit_device_that_cannot_hold_it_is_refused(self, fake_card: tuple[FakeBackend, DeviceManager],
                                                            model_cache: Path) -> None:
        backend, manager = fake_card
        backend.cards[0].others = int(7.5 * GiB)  # someone else fills the card
        with pytest.raises(ModelDoesNotFitError, match="cuda:0 has"):
            ColPaliEmbedder("tiny-colpali", "cuda:0", cache_dir=model_cache, runtime=Runtime(manager))

    def test_auto_falls_back_and_the_report_says_why(self, fake_card: tuple[FakeBackend, DeviceManager],
                                                     model_cache: Path) -> None:
        backend, manager = fake_card
        backend.cards[0].others = int(7.5 * GiB)
        with ColPaliEmbedder("tiny-colpali", "auto", cache_dir=model_cache, runtime=Runtime(manager)) as emb:
            assert emb.device.label == "cpu"
            report = emb.embed_pages(PAGES[:1]).report
            assert report.device == "cpu" and report.dtype == "float32"
            assert report.placement_note is not None and "under its 65% line" in report.placement_note

    def test_oom_fallback_runs_a_real_cpu_copy(self, fake_card: tuple[FakeBackend, DeviceManager],
                                               model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        _, manager = fake_card
        with ColPaliEmbedder("tiny-colpali", device="cpu", cache_dir=model_cache) as plain:
            reference = plain.embed_images(PAGES[:3])
        with ColPaliEmbedder("tiny-colpali", "cuda:0", cache_dir=model_cache, runtime=Runtime(manager),
                             dtype=torch.float32) as emb:
            inject_oom(monkeypatch, emb.model, at_batch=1)  # the card's model fails every batch
            run = emb.embed_pages(PAGES[:3])
            out = [r.vectors for r in run.values()]
            report = run.report
            assert report.cpu_fallback_items == 3 and report.recoveries["cpu_fallback"] >= 1
            assert f"{emb.job.key}|cpu-fallback" in emb.model_manager.loaded  # admitted like any model
        assert close(out, reference)

    def test_no_room_for_the_cpu_copy_fails_the_page_clearly(self, model_cache: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(DeviceInfo, "torch_device", property(lambda self: torch.device("cpu")))
        manager = DeviceManager([FakeBackend(cards=[FakeCard(total=8 * GiB)]),
                                 fake_cpu(total=8 * GiB, others=int(5.2 * GiB))])
        with ColPaliEmbedder("tiny-colpali", "cuda:0", cache_dir=model_cache, runtime=Runtime(manager),
                             dtype=torch.float32) as emb:
            inject_oom(monkeypatch, emb.model, at_batch=1)
            results = emb.embed_pages(PAGES[:2]).results
        assert all(isinstance(r, ItemFailure) and "no CPU fallback" in r.reason for r in results)
