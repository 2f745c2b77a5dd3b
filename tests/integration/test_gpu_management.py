"""End to end: the embedder's resource management on a real model (CPU).

A "memory cap" is emulated in the model's forward: a batch whose padded
tokens exceed the cap raises torch's real OOM type, as a small card would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ragged.embeddings import ColPaliEmbedder
from ragged.gpu import BatchSizeConfig, DeviceType
from tests.fakes import oom_message
from tests.pages import MIXED, make_pages


def cap_forward(monkeypatch: pytest.MonkeyPatch, model: torch.nn.Module, max_tokens: int) -> list[tuple[int, int]]:
    """Raise a real OOM when batch x padded length exceeds ``max_tokens``."""
    calls: list[tuple[int, int]] = []
    original = model.forward

    def forward(*args: object, **kwargs: torch.Tensor) -> object:
        batch, length = kwargs["input_ids"].shape
        calls.append((int(batch), int(length)))
        if batch * length > max_tokens:
            raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, batch * length * 2**20))
        return original(*args, **kwargs)

    monkeypatch.setattr(model, "forward", forward)
    return calls


def test_small_card_run_returns_every_page_and_learns_the_limit(model_cache: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    pages = make_pages(MIXED * 3, seed=3)
    with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, enable_adaptive_batching=False,
                         batch_size=1) as plain:
        reference = plain.embed_images(pages)
    config = BatchSizeConfig(initial_batch_size=8)
    with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, batch_config=config) as emb:
        calls = cap_forward(monkeypatch, emb.model, max_tokens=2500)
        run = emb.embed_pages(pages)
    out, report = [r.vectors for r in run.values()], run.report
    for got, want in zip(out, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4 * float(np.abs(want).max()))
    assert sum(report.batch_sizes) == len(pages)
    assert report.ooms >= 1 and report.cpu_fallback_items == 0
    # Once the cap is learnt, OOMs stop: none in the second half of the run.
    failures = [n for n, (b, length) in enumerate(calls) if b * length > 2500]
    assert failures and max(failures) < len(calls) // 2 + 1
    assert all(b * length <= 2500 for b, length in calls[max(failures) + 1 :])


def test_cost_sorted_batches_pad_less_than_input_order(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pages = make_pages(MIXED * 2, seed=5)
    config = BatchSizeConfig(min_batch_size=2, max_batch_size=2, initial_batch_size=2)
    padded: dict[str, int] = {}
    for adaptive in (True, False):
        with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, batch_size=2, batch_config=config,
                             enable_adaptive_batching=adaptive) as emb:
            calls = cap_forward(monkeypatch, emb.model, max_tokens=10**9)
            emb.embed_images(pages)
            padded["sorted" if adaptive else "input order"] = sum(b * length for b, length in calls)
    assert padded["sorted"] < padded["input order"]


@pytest.mark.cuda
def test_real_cuda_embedding_with_a_capped_allocator(model_cache: Path) -> None:
    """On a real GPU: cap the allocator so a batch of 32 pages cannot fit, force
    it, and check that real OOMs happened and every page came back."""
    pages = make_pages(MIXED * 4, seed=7)
    with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, device="cpu", batch_size=1,
                         enable_adaptive_batching=False) as cpu:
        reference = cpu.embed_images(pages)
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(min(1.0, 300 * 1024**2 / total), 0)  # a 300 MiB card
    try:
        with ColPaliEmbedder("tiny-colqwen2", cache_dir=model_cache, device="cuda", dtype=torch.float32,
                             enable_adaptive_batching=False, batch_size=32) as emb:
            run = emb.embed_pages(pages)
            out, report = [r.vectors for r in run.values()], run.report
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
    assert report.device.startswith("cuda")
    assert report.ooms >= 1, "the cap did not cause an OOM: lower it"
    for got, want in zip(out, reference, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-2, atol=1e-2)
