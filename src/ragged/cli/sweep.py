"""The batch-size sweep behind ``ragged gpu benchmark``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.recovery import RecoveryOptions
from ragged.gpu.runtime import Runtime
from ragged.gpu.types import DeviceInfo
from ragged.paths import cache_dir


@dataclass
class SweepRow:
    """One run of the sweep (memory in bytes)."""

    label: str
    batch: int | None
    pages_per_second: float
    peak_bytes: int | None
    ooms: int


def synthetic_pages(n: int) -> list[Image.Image]:
    """Letter-sized noise pages at 72 dpi (deterministic)."""
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (792, 612, 3), dtype=np.uint8)) for _ in range(n)]


def run_sweep(model: str, device: DeviceInfo, pages: int, max_batch: int, *,
              manager: DeviceManager) -> list[SweepRow]:
    """Fixed batches 1, 2, 4, ... up to ``max_batch`` (no OOM recovery), then adaptive."""
    images = synthetic_pages(pages)
    sizes = [1]
    while sizes[-1] * 2 <= max_batch:
        sizes.append(sizes[-1] * 2)
    rows: list[SweepRow] = []
    # Fixed sizes are measured plain (an OOM is the size failing); adaptive with the full engine.
    with Runtime(manager, recovery=RecoveryOptions.none()) as plain, Runtime(manager) as managed:
        runs: list[tuple[str, int | None]] = [*((f"fixed {s}", s) for s in sizes), ("adaptive", None)]
        for label, size in runs:
            emb = ColPaliEmbedder(model, device=device, batch_size=size if size else max_batch, cache_dir=cache_dir(),
                                  enable_adaptive_batching=size is None, runtime=managed if size is None else plain)
            emb.embed_images(images[:1])  # warm-up
            start = time.perf_counter()
            report = emb.embed_pages(images).report
            seconds = time.perf_counter() - start
            if report.failed_items:  # without recovery, a size that runs out of memory fails its batches
                rows.append(SweepRow(label, size, 0.0, None, report.ooms))
                continue
            label = label if size else f"adaptive ({','.join(map(str, sorted(set(report.batch_sizes))))})"
            rows.append(SweepRow(label, size, pages / seconds, report.peak_bytes, report.ooms))
    return rows


def plot_sweep(rows: list[SweepRow], path: Path, title: str) -> None:
    """A two-panel PNG: pages/s and peak memory by batch size."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fixed = [r for r in rows if r.batch]
    fig, (speed, memory) = plt.subplots(1, 2, figsize=(9, 3.5))
    speed.plot([r.batch for r in fixed], [r.pages_per_second for r in fixed], "o-", label="fixed")
    for r in rows:
        if r.batch is None:
            speed.axhline(r.pages_per_second, color="tab:green", linestyle="--", label=r.label)
    speed.set(xscale="log", xlabel="batch size", ylabel="pages/s", title="throughput")
    speed.legend()
    memory.plot([r.batch for r in fixed], [(r.peak_bytes or 0) / 1024**2 for r in fixed], "o-")
    memory.set(xscale="log", xlabel="batch size", ylabel="peak MiB above model", title="memory")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
