"""The GPU check: real OOM recovery and adaptive batching on a CUDA card.

    python -m benchmarks.gpu_check            # on a CUDA machine, under 8 minutes
    python -m benchmarks.gpu_check --smoke    # the same code paths on the CPU, tiny

1. Runs the CUDA-marked tests for real.
2. Builds full-size architectures with random weights (ColQwen2 at Qwen2-VL-2B
   size, ColModernVBert at 250 M) in bf16.
3. OOM recovery: emulates 4 GB and 8 GB cards with
   ``torch.cuda.set_per_process_memory_fraction`` and starts with a batch far
   too large; every page must come back, matching a batch-of-one reference.
4. Adaptive batching against a sweep of fixed batch sizes at several caps:
   pages per second relative to the best fixed size and to fixed size 4,
   peak memory against the target, OOM count. A fixed size that runs out
   of memory is reported as failed (no recovery for the baseline). Adaptive
   runs once with preprocessing pipelined (the default on a GPU) and once
   without, to measure what the overlap is worth.

Prints Markdown tables ready for docs/benchmarks.md and, where ``$OUT`` is
set, writes them with the raw numbers to ``$OUT/gpu_check.{md,json}``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from loguru import logger
from PIL import Image, ImageDraw

from benchmarks.full_size import build
from ragged.embeddings import ColPaliEmbedder
from ragged.errors import OutOfMemoryRecoveryError
from ragged.gpu import BatchSizeConfig, DeviceManager, OOMHandler
from ragged.gpu.model_manager import ModelManager

GB = 10**9
LINES: list[str] = []


def emit(text: str = "") -> None:
    """Print and keep for the Markdown report."""
    print(text, flush=True)
    LINES.append(text)


def table(headers: list[str], rows: list[list[Any]]) -> None:
    emit("| " + " | ".join(headers) + " |")
    emit("|" + "|".join("---" for _ in headers) + "|")
    for row in rows:
        emit("| " + " | ".join(str(c) for c in row) + " |")
    emit()


def pages(n: int, seed: int = 0) -> list[Image.Image]:
    """Document-like pages of mixed sizes (letter and A4 at 72-150 dpi, slides)."""
    rng = np.random.default_rng(seed)
    sizes = [(612, 792), (1275, 1650), (595, 842), (1240, 1754), (1024, 768), (850, 1100)]
    out = []
    for i in range(n):
        w, h = sizes[i % len(sizes)]
        img = Image.fromarray(rng.integers(200, 255, (h, w, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(img)
        for y in range(40, h - 40, 40):
            draw.text((40, y), f"Page {i} line {y}: revenue grew in the quarter", fill=(0, 0, 0))
        out.append(img)
    return out


@dataclass
class Cap:
    """An emulated card: the per-process memory fraction for ``gb`` GB."""

    label: str
    gb: float | None  # None: the whole card

    def apply(self, smoke: bool) -> None:
        if smoke or not torch.cuda.is_available():
            return
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        fraction = 1.0 if self.gb is None else min(1.0, self.gb * GB / total)
        torch.cuda.set_per_process_memory_fraction(fraction, 0)


def run_tests(smoke: bool) -> None:
    emit("## CUDA-marked tests")
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "--no-cov", "-p", "no:cacheprovider", "tests"]
    if smoke:
        emit("(skipped in --smoke)")
        return
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    tail = [line for line in result.stdout.splitlines() if line.strip()][-3:]
    emit(f"`{' '.join(cmd[2:])}` exit {result.returncode}: " + " / ".join(tail))
    emit()


def embed_run(models: ModelManager, folder: Path, cache: Path, device: str, imgs: list[Image.Image], *,
              adaptive: bool, batch: int | None, config: BatchSizeConfig | None = None,
              recover: bool = True, prefetch: bool | None = None) -> dict[str, Any]:
    """One embedding run; returns its figures (or the failure). The model
    stays loaded in ``models`` between runs."""
    handler = None if recover else OOMHandler(
        enable_cache_clearing=False, enable_batch_reduction=False, enable_cpu_fallback=False
    )
    emb = ColPaliEmbedder(str(folder), device=device, batch_size=batch, cache_dir=cache,
                          enable_adaptive_batching=adaptive, batch_config=config, oom_handler=handler,
                          model_manager=models, prefetch=prefetch)
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        try:
            out = emb.embed_images(imgs)
        except OutOfMemoryRecoveryError:
            return {"failed": "OOM"}
        seconds = time.perf_counter() - start
        report = emb.last_report
        assert report is not None
        peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0
        return {
            "pages_per_s": len(imgs) / seconds, "peak_bytes": peak, "ooms": report.ooms,
            "recoveries": report.recoveries, "sizes": sorted(set(report.batch_sizes)),
            "budget": report.budget_bytes, "pages": len(out), "embeddings": out,
            "cpu_fallback": report.cpu_fallback_items,
        }
    finally:
        del emb
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def max_rel_diff(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max(float(np.abs(x - y).max() / max(1e-6, float(np.abs(y).max()))) for x, y in zip(a, b, strict=True))


def oom_section(models: dict[str, Path], cache: Path, device: str, smoke: bool, n: int) -> list[dict[str, Any]]:
    emit("## Real OOM recovery on emulated small cards")
    emit("Adaptive batching started at 32 pages per batch (far too many), recovery on.")
    imgs = pages(n, seed=1)
    rows, raw = [], []
    plan = [("colmodernvbert-250m", Cap("4 GB", 4)), ("colqwen2-2b", Cap("8 GB", 8))]
    for name, cap in plan:
        cap.apply(smoke)
        with ModelManager(idle_timeout_s=None) as held:
            ref = embed_run(held, models[name], cache, device, imgs, adaptive=False, batch=1)
            got = embed_run(held, models[name], cache, device, imgs, adaptive=True, batch=None,
                            config=BatchSizeConfig(initial_batch_size=32, max_batch_size=32))
        Cap("full", None).apply(smoke)
        if "failed" in got or "failed" in ref:
            rows.append([name, cap.label, "FAILED", "-", "-", "-", "-"])
            continue
        diff = max_rel_diff(got["embeddings"], ref["embeddings"])
        rows.append([name, cap.label, f"{got['pages']}/{n}", got["ooms"],
                     ", ".join(f"{k} {v}" for k, v in got["recoveries"].items() if v) or "-",
                     ",".join(map(str, got["sizes"])), f"{diff:.1e}"])
        raw.append({"model": name, "cap": cap.label, **{k: v for k, v in got.items() if k != "embeddings"},
                    "max_rel_diff": diff})
    table(["model", "card", "pages back", "real OOMs", "recoveries", "batch sizes used", "max rel. diff vs batch 1"],
          rows)
    return raw


def sweep_section(folder: Path, cache: Path, device: str, smoke: bool, n: int,
                  deadline: float) -> list[dict[str, Any]]:
    emit("## Adaptive batching against fixed batch sizes (ColQwen2, 2.2 B, bf16)")
    imgs = pages(n, seed=2)
    caps = [Cap("8 GB", 8), Cap("16 GB", 16), Cap("full card", None)]
    fixed_sizes = [1, 2, 4] if smoke else [1, 2, 4, 8, 16, 32]
    raw: list[dict[str, Any]] = []
    for cap in caps:
        if time.monotonic() > deadline:
            emit(f"(cap {cap.label} skipped: time limit)")
            continue
        cap.apply(smoke)
        results: dict[str, dict[str, Any]] = {}
        with ModelManager(idle_timeout_s=None) as held:
            for size in fixed_sizes:
                results[f"fixed {size}"] = embed_run(held, folder, cache, device, imgs, adaptive=False,
                                                     batch=size, recover=False)
            results["adaptive"] = embed_run(held, folder, cache, device, imgs, adaptive=True, batch=None,
                                            config=BatchSizeConfig(max_batch_size=64))
            results["adaptive, no prefetch"] = embed_run(held, folder, cache, device, imgs, adaptive=True,
                                                         batch=None, config=BatchSizeConfig(max_batch_size=64),
                                                         prefetch=False)
        Cap("full", None).apply(smoke)
        ok = {k: v for k, v in results.items() if "failed" not in v and k.startswith("fixed")}
        best = max((v["pages_per_s"] for v in ok.values()), default=float("nan"))
        four = results.get("fixed 4", {}).get("pages_per_s", float("nan"))
        cap_bytes = (cap.gb * GB) if cap.gb else (torch.cuda.get_device_properties(0).total_memory
                                                  if torch.cuda.is_available() else 0)
        emit(f"### Cap: {cap.label}")
        rows = []
        for key, res in results.items():
            if "failed" in res:
                rows.append([key, "OOM (no recovery)", "-", "-", "-", "-", "-"])
                continue
            rows.append([
                key, f"{res['pages_per_s']:.1f}", f"{res['pages_per_s'] / best:.2f}x",
                f"{res['pages_per_s'] / four:.2f}x" if four == four else "-",
                f"{res['peak_bytes'] / GB:.2f} GB" + (f" ({100 * res['peak_bytes'] / cap_bytes:.0f}%)"
                                                      if cap_bytes else ""),
                res["ooms"], ",".join(map(str, res["sizes"])),
            ])
            raw.append({"cap": cap.label, "run": key, **{k: v for k, v in res.items() if k != "embeddings"}})
        table(["run", "pages/s", "vs best fixed", "vs fixed 4", "peak memory (of cap)", "OOMs", "batch sizes"], rows)
    return raw


def main() -> None:
    parser = argparse.ArgumentParser(description="GPU check for ragged's resource management")
    parser.add_argument("--smoke", action="store_true", help="run the code paths on the CPU with tiny depth")
    parser.add_argument("--pages", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip sections past this many seconds")
    args = parser.parse_args()
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    start = time.monotonic()
    deadline = start + args.budget_s
    smoke = args.smoke or not torch.cuda.is_available()
    if not args.smoke and not torch.cuda.is_available():
        print("No CUDA device: running --smoke instead (CPU, tiny depth).", file=sys.stderr)
    device = "cpu" if smoke else "cuda"
    n = args.pages or (6 if smoke else 96)
    manager = DeviceManager()
    card = manager.get_optimal_device(device)
    emit(f"# ragged GPU check, {dt.date.today().isoformat()}")
    emit(f"- device: {card} ({card.total_memory / GB:.1f} GB), torch {torch.__version__}, "
         f"CUDA {torch.version.cuda}, {'SMOKE (CPU, tiny depth)' if smoke else 'full size'}")
    emit()
    run_tests(smoke)
    work = Path(os.environ.get("RAGGED_GPU_CHECK_DIR") or tempfile.mkdtemp(prefix="ragged-gpu-check-"))
    cache = work / "cache"
    dtype = torch.float32 if smoke else torch.bfloat16
    build_device = torch.device("cpu" if smoke else "cuda")
    began = time.monotonic()
    models = {name: build(name, work / name, cache, build_device, dtype, layers=1 if smoke else None)
              for name in ("colqwen2-2b", "colmodernvbert-250m")}
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    emit(f"Built the random-weight models in {time.monotonic() - began:.0f} s.")
    emit()
    raw: dict[str, Any] = {"device": str(card), "total_bytes": card.total_memory, "smoke": smoke}
    raw["oom"] = oom_section(models, cache, device, smoke, min(n, 48))
    raw["sweep"] = sweep_section(models["colqwen2-2b"], cache, device, smoke, n, deadline)
    emit(f"Total time: {time.monotonic() - start:.0f} s.")
    out = os.environ.get("OUT")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "gpu_check.md").write_text("\n".join(LINES) + "\n")
        (Path(out) / "gpu_check.json").write_text(json.dumps(raw, indent=2, default=str))


if __name__ == "__main__":
    main()
