"""ColPaliEmbedder on the tiny presets, on the CPU."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from ragged.embeddings import PRESETS, ColPaliEmbedder
from ragged.embeddings.cost import visual_tokens
from ragged.embeddings.loading import default_dtype
from ragged.errors import (
    ConfigurationError,
    DeviceUnavailableError,
    ModelError,
    OutOfMemoryRecoveryError,
    UnknownModelError,
)
from ragged.gpu import BatchSizeConfig, DeviceInfo, DeviceType
from tests.fakes import oom_message
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

    def test_adaptive_and_fixed_agree(self, embedder: ColPaliEmbedder, model_cache: Path,
                                      reference: list[np.ndarray]) -> None:
        fixed = ColPaliEmbedder(embedder.model_name, cache_dir=model_cache, batch_size=3,
                                enable_adaptive_batching=False)
        out = fixed.embed_images(PAGES)
        assert fixed.last_report is not None and fixed.last_report.batch_sizes == (3, 3, 2)
        assert close(out, reference)
        fixed.close()

    def test_oom_in_forward_loses_nothing(self, embedder: ColPaliEmbedder, reference: list[np.ndarray],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(embedder, "_sizer", None)  # a fresh run that starts at 4 pages
        monkeypatch.setattr(embedder, "batch_config", BatchSizeConfig(initial_batch_size=4))
        seen = inject_oom(monkeypatch, embedder.model, at_batch=3)
        out = embedder.embed_images(PAGES)
        assert close(out, reference)
        report = embedder.last_report
        assert report is not None and report.ooms >= 1 and report.recoveries["reduce_batch"] == report.ooms
        assert sum(report.batch_sizes) == len(PAGES) and max(report.batch_sizes) <= 2
        assert seen[:2] == [4, 2]  # the failed 4 is split in halves
        for n, size in enumerate(seen):
            if size >= 3:  # an OOM: nothing later may be as large
                assert all(later < size for later in seen[n + 1 :])

    def test_prefetching_gives_the_same_pages(self, embedder: ColPaliEmbedder, model_cache: Path,
                                              reference: list[np.ndarray]) -> None:
        with ColPaliEmbedder(embedder.model_name, cache_dir=model_cache, batch_size=3,
                             enable_adaptive_batching=False, prefetch=True) as piped:
            assert close(piped.embed_images(PAGES), reference)
            assert piped.last_report is not None and piped.last_report.batch_sizes == (3, 3, 2)

    def test_queries_and_scores(self, embedder: ColPaliEmbedder) -> None:
        queries = embedder.embed_queries(["quarterly revenue", "which page has the table?"])
        pages = embedder.embed_images(PAGES[:3])
        assert [q.shape[1] for q in queries] == [128, 128]
        scores = embedder.score(queries, pages)
        manual = np.array([[float((q @ p.T).max(axis=1).sum()) for p in pages] for q in queries])
        assert scores.shape == (2, 3)
        np.testing.assert_allclose(scores, manual, rtol=1e-4)

    def test_report(self, embedder: ColPaliEmbedder) -> None:
        embedder.embed_images(PAGES)
        report = embedder.last_report
        assert report is not None
        assert report.device == "cpu" and report.dtype == "float32" and report.items == len(PAGES)
        assert sum(report.batch_sizes) == len(PAGES) and report.items_per_second > 0
        assert report.to_dict()["items_per_second"] > 0


class TestBehaviour:
    def test_batch_size_caps_adaptive_batches(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, batch_size=3) as emb:
            emb.embed_images(PAGES * 2)
            assert emb.last_report is not None and max(emb.last_report.batch_sizes) <= 3

    def test_sizer_learns_across_calls(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            sizer = emb.batch_sizer
            emb.embed_images(PAGES)
            first = emb.last_report
            assert first is not None and first.batch_sizes[0] == 2  # the initial probe
            emb.embed_images(PAGES)
            second = emb.last_report
            assert emb.batch_sizer is sizer and second is not None
            assert len(sizer.measurements) == len(first.batch_sizes) + len(second.batch_sizes)
            assert sizer.fit() is not None  # the second call was sized from measurements

    def test_persistent_oom_on_cpu_is_reported_not_crashed(self, model_cache: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            inject_oom(monkeypatch, emb.model, at_batch=1)
            with pytest.raises(OutOfMemoryRecoveryError, match="Out of memory on cpu"):
                emb.embed_images(PAGES[:2])

    def test_unloaded_model_is_reloaded(self, model_cache: Path) -> None:
        with ColPaliEmbedder("tiny-colpali", cache_dir=model_cache) as emb:
            first = emb.embed_images(PAGES[:2])
            old = emb.model
            assert emb.model_manager.unload(emb._key)
            assert next(old.parameters()).device.type == "meta"
            assert close(emb.embed_images(PAGES[:2]), first)

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

    def test_dtypes_by_device(self) -> None:
        cuda, mps, cpu = (DeviceInfo(device_type=k) for k in (DeviceType.CUDA, DeviceType.MPS, DeviceType.CPU))
        assert default_dtype(cuda, True) is torch.bfloat16 and default_dtype(cuda, False) is torch.float16
        assert default_dtype(mps, True) is torch.bfloat16 and default_dtype(mps, False) is torch.float32
        assert default_dtype(cpu, True) is torch.float32


def test_presets_are_deterministic(tmp_path: Path) -> None:
    import hashlib

    from ragged.embeddings.presets import ensure_preset

    digests = {
        hashlib.sha256((ensure_preset("tiny-colqwen2", tmp_path / d) / "model.safetensors").read_bytes()).hexdigest()
        for d in ("a", "b")
    }
    assert len(digests) == 1
