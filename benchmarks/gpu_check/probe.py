"""Measurements of embedding runs, taken from outside ragged.

:class:`Meter` wraps the model's ``forward`` and the processor's
``process_images`` on the instances a run uses: it times model compute and
preprocessing apart, reads the true peak of each batch (the allocator's
peak reset just before each forward, so it holds weights, inputs and
activations), and counts the OOMs it sees. In ``--smoke`` it emulates a
capped card by raising a real ``torch.OutOfMemoryError`` for a forward of
more pages than the cap allows, so that the recovery paths run on the CPU.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from statistics import median
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ragged.embeddings import ColPaliEmbedder
from ragged.gpu import BatchSizeConfig, RecoveryOptions, Runtime

GIB = 1024**3
MIB = 1024**2
PAGE_SIZES = [(612, 792), (1275, 1650), (595, 842), (1240, 1754), (1024, 768), (850, 1100)]


def gib(n: float) -> str:
    """Bytes as GiB with two decimals."""
    return f"{n / GIB:.2f}"


def cuda() -> bool:
    """True where the check runs on a CUDA card (never in --smoke)."""
    return os.environ.get("RAGGED_GPU_CHECK_SMOKE") != "1" and bool(torch.cuda.is_available())


def sync() -> None:
    """Wait for the GPU (no-op on the CPU)."""
    if cuda():
        torch.cuda.synchronize()


def allocated() -> int:
    """Bytes held by tensors on the card now (0 on the CPU)."""
    return int(torch.cuda.memory_allocated()) if cuda() else 0


def outside_allocator() -> int:
    """Bytes in use on the card beyond torch's allocator: the CUDA context,
    libraries' own buffers and other processes (0 on the CPU)."""
    if not cuda():
        return 0
    free, total = torch.cuda.mem_get_info()
    return max(0, int(total - free) - int(torch.cuda.memory_reserved()))


def pages(n: int, seed: int, scale: float = 1.0) -> list[Image.Image]:
    """Document-like pages of mixed sizes (letter and A4 at 72-150 dpi, a slide)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        w, h = (max(32, int(d * scale)) for d in PAGE_SIZES[i % len(PAGE_SIZES)])
        img = Image.fromarray(rng.integers(200, 255, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for y in range(20, h - 20, 40):
            draw.text((20, y), f"Page {i} line {y}: revenue grew in the quarter", fill=(0, 0, 0))
        out.append(img)
    return out


def page_tokens(processor: Any, imgs: Sequence[Image.Image]) -> list[int]:
    """Each page's sequence length under ``processor`` (measured once per page size)."""
    by_size: dict[tuple[int, int], int] = {}
    for img in imgs:
        if img.size not in by_size:
            by_size[img.size] = int(processor.process_images([img])["attention_mask"].sum())
    return [by_size[img.size] for img in imgs]


def looks_like_oom(exc: BaseException | None) -> bool:
    """An out-of-memory error, or ragged's give-up after one, anywhere in the chain."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if "OutOfMemory" in type(exc).__name__ or "out of memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False


@dataclass(frozen=True)
class Cap:
    """An emulated smaller card: ``set_per_process_memory_fraction`` for
    ``bytes`` on CUDA; in --smoke, at most ``smoke_pages`` pages per forward."""

    label: str
    bytes: int | None  # None: the whole card
    smoke_pages: int | None = None

    def apply(self, meter: Meter) -> None:
        """Make this the card's size for what follows."""
        meter.max_pages = self.smoke_pages if not cuda() else None
        if cuda():
            gc.collect()
            torch.cuda.empty_cache()
            total = torch.cuda.get_device_properties(0).total_memory
            fraction = 1.0 if self.bytes is None else min(1.0, self.bytes / total)
            torch.cuda.set_per_process_memory_fraction(fraction, 0)

    def of(self) -> int:
        """The cap in bytes (the whole card where none is set); 0 on the CPU, where nothing is capped."""
        if not cuda():
            return 0
        return self.bytes if self.bytes is not None else int(torch.cuda.get_device_properties(0).total_memory)


FULL = Cap("full card", None)


@dataclass
class Batch:
    """One forward pass as the meter saw it."""

    pages: int
    padded_tokens: int
    real_tokens: int
    seconds: float
    peak_bytes: int  # allocator peak during the forward: weights, inputs and activations


class Meter:
    """Times and measures the forwards and preprocessing of embedding runs."""

    def __init__(self) -> None:
        self.max_pages: int | None = None  # --smoke: emulated cap
        self._lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        """Forget the last run's figures."""
        self.batches: list[Batch] = []
        self.prepare_s = 0.0
        self.ooms_seen = 0

    def attach(self, emb: ColPaliEmbedder) -> None:
        """Measure ``emb``'s model (wrapped once, shared by embedders) and processor."""
        model = emb.model
        if getattr(model, "_gpu_check_meter", None) is None:
            model.forward = self._wrap_forward(model.forward, model)
        model._gpu_check_meter = self
        processor = emb.processor
        if getattr(processor, "_gpu_check_meter", None) is None:
            processor.process_images = self._wrap_prepare(processor.process_images, processor)
        processor._gpu_check_meter = self

    @staticmethod
    def _wrap_forward(original: Callable[..., Any], owner: Any) -> Callable[..., Any]:
        def forward(*args: Any, **kwargs: Any) -> Any:
            meter: Meter = owner._gpu_check_meter
            return meter._forward(original, args, kwargs)

        return forward

    @staticmethod
    def _wrap_prepare(original: Callable[..., Any], owner: Any) -> Callable[..., Any]:
        def process_images(*args: Any, **kwargs: Any) -> Any:
            began = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                meter: Meter = owner._gpu_check_meter
                with meter._lock:
                    meter.prepare_s += time.perf_counter() - began

        return process_images

    def _forward(self, original: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        size = int(ids.shape[0]) if ids is not None else 0
        padded = int(ids.numel()) if ids is not None else 0
        real = int(mask.sum()) if mask is not None else padded
        if self.max_pages is not None and size > self.max_pages:
            self.ooms_seen += 1
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to run {size} pages at once (emulated by the GPU check's "
                f"--smoke, whose capped card takes {self.max_pages})"
            )
        sync()
        if cuda():
            torch.cuda.reset_peak_memory_stats()
        began = time.perf_counter()
        try:
            out = original(*args, **kwargs)
            sync()
        except Exception as exc:
            if looks_like_oom(exc):
                self.ooms_seen += 1
            raise
        seconds = time.perf_counter() - began
        peak = int(torch.cuda.max_memory_allocated()) if cuda() else 0
        self.batches.append(Batch(size, padded, real, seconds, peak))
        return out


@dataclass(frozen=True)
class RunSpec:
    """One embedding run of the check."""

    label: str
    adaptive: bool
    batch: int | None = None  # fixed batch size, or the adaptive cap
    order: str = "input"  # "input", "sorted" (by sequence length), or "by ragged" (adaptive sorts itself)
    prefetch: bool | None = None  # None: ragged's default (on for accelerators)
    recover: bool = True  # OOM recovery (no CPU fallback: 2 B parameters on the CPU cannot finish in time)
    config: BatchSizeConfig | None = None


def new_embedder(spec: RunSpec, runtime: Runtime, folder: Path, cache: Path, device: str) -> ColPaliEmbedder:
    """An embedder for ``spec`` sharing the model loaded in ``runtime``, with an OOM engine of its own."""
    recovery = RecoveryOptions(enable_cache_clearing=spec.recover, enable_batch_reduction=spec.recover,
                               enable_cpu_fallback=False)
    emb = ColPaliEmbedder(str(folder), device=device, batch_size=spec.batch, cache_dir=cache,
                          enable_adaptive_batching=spec.adaptive, batch_config=spec.config,
                          runtime=runtime.with_recovery(recovery), prefetch=spec.prefetch)
    where = next(emb.model.parameters()).device.type
    if where != device:
        raise RuntimeError(f"the model was loaded on {where}, not {device}: too little free memory?")
    return emb


def embed(spec: RunSpec, emb: ColPaliEmbedder, meter: Meter, imgs: Sequence[Image.Image],
          keep: bool = False) -> dict[str, Any]:
    """Embed ``imgs`` once with ``emb``; the run's figures (status "ok" or "oom")."""
    meter.attach(emb)
    meter.reset()
    weights = allocated()
    sync()
    began = time.perf_counter()
    out: list[np.ndarray] | None = None
    report = None
    failure = ""
    try:
        run = emb.embed_pages(list(imgs), keep_going=False)
        out, report = [page.vectors for page in run.values()], run.report
    except Exception as exc:
        if not looks_like_oom(exc):
            raise
        failure = f"{type(exc).__name__}: {exc}"[:500]
    wall = time.perf_counter() - began
    result = summarise(spec, meter, len(imgs), wall, weights)
    if failure:
        result.update(status="oom", error=failure)
    else:
        assert out is not None and report is not None
        result.update(status="ok", pages_back=len(out), ooms_reported=report.ooms,
                      recoveries={k: v for k, v in report.recoveries.items() if v},
                      batch_sizes=list(report.batch_sizes), cpu_fallback=report.cpu_fallback_items,
                      budget_bytes=report.budget_bytes)
        if keep:
            result["embeddings"] = out
    release()
    return result


def summarise(spec: RunSpec, meter: Meter, n: int, wall: float, weights: int) -> dict[str, Any]:
    """The meter's figures for one run, as plain data."""
    model_s = sum(b.seconds for b in meter.batches)
    padded = sum(b.padded_tokens for b in meter.batches)
    real = sum(b.real_tokens for b in meter.batches)
    peak = max((b.peak_bytes for b in meter.batches), default=0)
    return {
        "label": spec.label, "adaptive": spec.adaptive, "batch": spec.batch, "order": spec.order,
        "prefetch": spec.prefetch, "pages": n, "wall_s": round(wall, 4), "pages_per_s": n / wall if wall else 0.0,
        "prepare_s": round(meter.prepare_s, 4), "model_s": round(model_s, 4),
        "model_pages_per_s": n / model_s if model_s else 0.0,
        "padding": 1 - real / padded if padded else 0.0, "weights_bytes": weights, "peak_bytes": peak,
        "ooms_seen": meter.ooms_seen, "batches": [asdict(b) for b in meter.batches],
    }


def release() -> None:
    """Return cached blocks between runs."""
    gc.collect()
    if cuda():
        torch.cuda.empty_cache()


def max_rel_diff(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> float:
    """Largest element difference relative to the reference's largest magnitude, over pages."""
    return max(float(np.abs(x - y).max() / max(1e-6, float(np.abs(y).max()))) for x, y in zip(a, b, strict=True))


def med(values: Sequence[float]) -> float:
    """Median, NaN for none."""
    return float(median(values)) if values else float("nan")
