"""The CUDA-marked tests, run for real (on the CPU in --smoke, where they skip).

Only the test files that hold a ``cuda`` mark are collected: the others
import packages the GPU machine lacks (LanceDB, pypdfium2). pytest runs
under the section's deadline; its whole output goes to the log, and a
timeout keeps what it printed.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections import deque
from pathlib import Path

from benchmarks.gpu_check.worker import ROOT, Context

MARK = re.compile(r"\bmark\.cuda\b")
SUMMARY = re.compile(r"(\d+) (passed|failed|skipped|deselected|errors?|xfailed|xpassed)")


def cuda_test_files(root: Path = ROOT) -> list[str]:
    """Test files, relative to ``root``, that hold a cuda mark."""
    return sorted(str(p.relative_to(root)) for p in (root / "tests").rglob("test_*.py")
                  if MARK.search(p.read_text(encoding="utf-8", errors="replace")))


def counts(lines: list[str]) -> dict[str, int]:
    """pytest's closing counts ({"passed": 3, ...}) from its last lines."""
    out: dict[str, int] = {}
    for line in reversed(lines):
        found = SUMMARY.findall(line)
        if found:
            for number, word in found:
                out["errors" if word.startswith("error") else word] = int(number)
            break
    return out


def run(ctx: Context) -> None:
    ctx.attempt("pytest", lambda: _pytest(ctx))


def _pytest(ctx: Context) -> None:
    files = cuda_test_files()
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rfEs", "-o", "addopts=", "-p", "no:cacheprovider",
           "--continue-on-collection-errors", *files]
    ctx.rec.md(f"`{' '.join(['python', *cmd[1:]])}`", "")
    tail: deque[str] = deque(maxlen=60)
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace")
    assert proc.stdout is not None
    reader = threading.Thread(target=_pump, args=(proc.stdout, tail), daemon=True)
    reader.start()
    try:
        code: int | None = proc.wait(timeout=max(1.0, ctx.time_left()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        code = None
    finally:
        if proc.poll() is None:  # stopped by the orchestrator: take pytest down too
            proc.kill()
    reader.join(timeout=5)
    lines = list(tail)
    found = counts(lines)
    ctx.rec.data("pytest", exit_code=code, counts=found, files=files, tail=lines)
    ctx.rec.md(f"exit {code if code is not None else 'none (timed out: killed)'}: "
               + (", ".join(f"{n} {w}" for w, n in found.items()) or "no summary line"))
    failures = [line for line in lines if line.startswith(("FAILED", "ERROR"))]
    if failures:
        ctx.rec.md("", *[f"- `{line}`" for line in failures[:20]])
    _judge(ctx, code, found)


def _judge(ctx: Context, code: int | None, found: dict[str, int]) -> None:
    bad = found.get("failed", 0) + found.get("errors", 0)
    if code is None:
        ctx.rec.check("cuda tests", False, "timed out; the log keeps pytest's output")
    elif ctx.smoke:
        ctx.rec.check("cuda tests", code in (0, 5) and not bad,
                      f"--smoke: collected and skipped without CUDA (exit {code})")
    else:
        ran = found.get("passed", 0)
        ctx.rec.check("cuda tests", code == 0 and ran > 0 and not bad, f"exit {code}, {ran} passed, {bad} failed")


def _pump(stream: object, tail: deque[str]) -> None:
    for line in stream:  # type: ignore[attr-defined]
        print(f"  pytest| {line.rstrip()}", flush=True)
        tail.append(line.rstrip())
