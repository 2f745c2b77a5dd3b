"""Builds the full-size architectures with random weights into the work folder.

bf16 on the card for the real check; in --smoke, float32 on the CPU with one
layer per tower and the tokenizer's own vocabulary. A model already there (a re-run with the same --work) is
reused.
"""

from __future__ import annotations

import math
import time
from functools import partial
from pathlib import Path

import torch

from benchmarks.full_size import BUILDS, build
from benchmarks.gpu_check.probe import GIB, release
from benchmarks.gpu_check.worker import Context


def run(ctx: Context) -> None:
    ctx.rec.table(["model", "dtype", "size", "parameters", "weights on disk", "seconds"])
    for name in BUILDS:
        if ctx.time_left() <= 0:
            ctx.rec.row([name, "-", "-", "-", "-", "skipped: time limit"])
            continue
        ctx.attempt(name, partial(_one, ctx, name))


def _one(ctx: Context, name: str) -> None:
    folder = ctx.model_dir(name)
    reused = (folder / "config.json").is_file()
    dtype = torch.float32 if ctx.smoke else torch.bfloat16
    began = time.monotonic()
    build(name, folder, ctx.cache, torch.device(ctx.device), dtype, smoke=ctx.smoke)
    seconds = time.monotonic() - began
    release()
    files = list(folder.glob("*.safetensors"))
    size = sum(f.stat().st_size for f in files)
    params = _parameters(files)
    size_text = "smoke: 1 layer per tower, small vocabulary" if ctx.smoke else "full"
    ctx.rec.row([name, str(dtype).removeprefix("torch."), size_text, f"{params / 1e9:.2f} B",
                 f"{size / GIB:.2f} GiB", "reused" if reused else f"{seconds:.0f}"])
    ctx.rec.data("model", model=name, parameters=params, bytes=size, seconds=seconds, reused=reused)


def _parameters(files: list[Path]) -> int:
    from safetensors import safe_open

    total = 0
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            total += sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())  # noqa: SIM118
    return total
