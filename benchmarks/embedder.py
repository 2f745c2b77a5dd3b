"""Overhead of ColPaliEmbedder's resource management against a plain loop.

    python -m benchmarks.embedder [--pages 48] [--batch-size 4] [--repeats 5]

For each tiny preset, the same model and processor embed the same pages
(a) in a plain loop of fixed batches, (b) through the embedder with a
fixed batch size (all the monitoring, measuring and OOM guarding, same
batches), and (c) with adaptive batching. Runs are interleaved (ABC ABC
...) and the best of the repeats is reported: on a shared two-core machine
the noise is one-sided (other work only slows a run down), so the minimum
time is the estimate of each path's own cost; the median is shown too.
"managing share" is measured inside the embedder, free of that noise: the
fraction of each call spent outside preprocessing and the forward pass.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from loguru import logger
from PIL import Image

from benchmarks._table import print_table
from ragged.embeddings import PRESETS, ColPaliEmbedder, EmbeddingReport
from ragged.paths import cache_dir


def plain_loop(model: torch.nn.Module, processor: object, pages: list[Image.Image], batch: int) -> list[np.ndarray]:
    """What a user would write by hand: fixed batches, mask, to numpy."""
    out: list[np.ndarray] = []
    for start in range(0, len(pages), batch):
        inputs = processor.process_images(pages[start : start + batch])  # type: ignore[attr-defined]
        inputs.pop("labels", None)
        with torch.inference_mode():
            vectors = model(**inputs).embeddings.float()  # (batch, tokens, dim)
        mask = inputs["attention_mask"].bool()  # (batch, tokens)
        out.extend(vectors[j][mask[j]].numpy() for j in range(vectors.shape[0]))
    return out


def pages_per_second(fn: Callable[[], object], n_pages: int) -> float:
    start = time.perf_counter()
    fn()
    return n_pages / (time.perf_counter() - start)


def measure(preset: str, pages: list[Image.Image], batch_size: int, repeats: int) -> tuple[str, ...]:
    """One table row: the three paths over the same model, interleaved."""
    fixed = ColPaliEmbedder(preset, cache_dir=cache_dir(), batch_size=batch_size, enable_adaptive_batching=False)
    adaptive = ColPaliEmbedder(preset, cache_dir=cache_dir(), batch_size=32)
    model, processor = fixed.model, fixed.processor
    runs: dict[str, list[float]] = {"plain": [], "fixed": [], "adaptive": []}
    shares: list[float] = []
    last: dict[str, EmbeddingReport] = {}  # each run's report, by configuration
    plain_loop(model, processor, pages[:batch_size], batch_size)  # warm-up
    adaptive.embed_images(pages)  # let the sizer calibrate once, as a long ingest would
    for _ in range(repeats):
        runs["plain"].append(pages_per_second(lambda: plain_loop(model, processor, pages, batch_size), len(pages)))
        runs["fixed"].append(pages_per_second(lambda: last.update(fixed=fixed.embed_pages(pages).report), len(pages)))
        shares.append(last["fixed"].overhead_fraction)
        runs["adaptive"].append(pages_per_second(lambda: last.update(adaptive=adaptive.embed_pages(pages).report),
                                                 len(pages)))
    best = {k: max(v) for k, v in runs.items()}  # best run = least disturbed
    mid = {k: statistics.median(v) for k, v in runs.items()}
    sizes = adaptive.embed_pages(pages).report.batch_sizes
    fixed.close()
    adaptive.close()
    return (
        preset, f"{best['plain']:.1f}", f"{best['fixed']:.1f}", f"{100 * (1 - best['fixed'] / best['plain']):+.1f}%",
        f"{100 * (1 - mid['fixed'] / mid['plain']):+.1f}%", f"{100 * statistics.median(shares):.2f}%",
        f"{best['adaptive']:.1f}", f"{best['adaptive'] / best['plain']:.2f}x", ",".join(map(str, sorted(set(sizes)))),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    logger.disable("ragged")
    rng = np.random.default_rng(0)
    pages = [Image.fromarray(rng.integers(0, 255, (448, 448, 3), dtype=np.uint8)) for _ in range(args.pages)]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.pages} pages of 448x448, "
          f"batch {args.batch_size}, best of {args.repeats} interleaved runs")
    rows = [measure(preset, pages, args.batch_size, args.repeats) for preset in PRESETS]
    print_table(["model", "plain p/s", "embedder fixed p/s", "overhead (best)", "overhead (median)",
                 "managing share", "adaptive p/s", "adaptive/plain",
                 "adaptive sizes"], rows)


if __name__ == "__main__":
    main()
