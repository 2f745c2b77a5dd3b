"""The child process that runs one section of the GPU check.

    python -m benchmarks.gpu_check.worker SECTION --target MODULE:FUNCTION --records FILE ...

It appends one JSON record a line to ``--records`` as results come in (the
orchestrator turns them into ``$OUT`` files while the section runs), catches
errors per run and goes on, and stops cleanly at its deadline or on SIGTERM.

For the check's own tests, variables inject faults into runs whose label
(``section:label``) matches one of their glob patterns (separated by ";"):
``RAGGED_GPU_CHECK_FAIL`` raises an error there, ``RAGGED_GPU_CHECK_STOP``
sends the worker the SIGTERM of a deadline, and ``RAGGED_GPU_CHECK_HANG``
sleeps there until stopped (with ``RAGGED_GPU_CHECK_HANG_HARD=1`` it also
ignores SIGTERM, so only SIGKILL ends it).
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")
STOPPED_EXIT = 124  # the exit code after a clean stop at the deadline
ROOT = Path(__file__).resolve().parents[2]  # the repository


class Stopped(BaseException):
    """Raised by SIGTERM: the orchestrator's deadline for this section passed."""


class InjectedError(RuntimeError):
    """An error injected by ``RAGGED_GPU_CHECK_FAIL`` (tests only)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # one stop is enough; let the summary be written
    raise Stopped("stopped by the orchestrator (deadline)")


def _matches(variable: str, label: str) -> bool:
    patterns = [p.strip() for p in os.environ.get(variable, "").split(";") if p.strip()]
    return any(fnmatch.fnmatchcase(label, p) for p in patterns)


class Recorder:
    """Appends records (one JSON object a line) for the orchestrator, and
    echoes Markdown to stdout, which the orchestrator keeps in the log."""

    def __init__(self, path: Path) -> None:
        self._file = path.open("a", encoding="utf-8")

    def emit(self, kind: str, **data: Any) -> None:
        """One record, written and flushed at once."""
        self._file.write(json.dumps({"kind": kind, "t": round(time.time(), 3), **data}, default=str) + "\n")
        self._file.flush()

    def md(self, *lines: str) -> None:
        """Markdown lines for the report."""
        for line in lines:
            print(line, flush=True)
            self.emit("md", text=line)

    def table(self, headers: Sequence[str]) -> None:
        """A Markdown table header; rows follow with :meth:`row`."""
        self.md("| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|")

    def row(self, cells: Sequence[object]) -> None:
        """One Markdown table row."""
        self.md("| " + " | ".join(str(c) for c in cells) + " |")

    def check(self, name: str, ok: bool, detail: str) -> None:
        """An assertion about the hardware's behaviour; a failed one marks the section."""
        print(f"check {'ok' if ok else 'FAILED'}: {name}: {detail}", flush=True)
        self.emit("check", name=name, ok=ok, detail=detail)

    def data(self, what: str, **fields: Any) -> None:
        """Raw figures for the JSON file."""
        self.emit("data", what=what, **fields)


@dataclass
class Context:
    """What a section's ``run(ctx)`` gets: options, deadline and recorder."""

    section: str
    smoke: bool
    work: Path
    pages: int
    reps: int
    deadline: float  # time.monotonic() by which the section must have stopped
    rec: Recorder
    errors: int = field(default=0)

    @property
    def device(self) -> str:
        """"cuda" on the GPU machine, "cpu" in --smoke."""
        return "cpu" if self.smoke else "cuda"

    @property
    def cache(self) -> Path:
        """ragged's model cache (tiny presets, whose processors the full-size models use)."""
        return self.work / "cache"

    def model_dir(self, name: str) -> Path:
        """Where the build section saves the model ``name``."""
        return self.work / "models" / name

    def time_left(self) -> float:
        """Seconds before the section's own deadline."""
        return self.deadline - time.monotonic()

    def attempt(self, label: str, fn: Callable[[], T]) -> T | None:
        """Run ``fn``; on an error, record it (with its traceback) and return None."""
        full = f"{self.section}:{label}"
        began = time.monotonic()
        try:
            if _matches("RAGGED_GPU_CHECK_STOP", full):
                os.kill(os.getpid(), signal.SIGTERM)  # as the orchestrator does at a deadline
                time.sleep(60)  # the handler raises Stopped first
            if _matches("RAGGED_GPU_CHECK_HANG", full):
                _hang()
            if _matches("RAGGED_GPU_CHECK_FAIL", full):
                raise InjectedError(f"injected failure in {full}")
            return fn()
        except Exception as exc:
            self.errors += 1
            text = traceback.format_exc()
            print(f"ERROR in {full}:\n{text}", flush=True)
            self.rec.emit("error", label=label, error=f"{type(exc).__name__}: {exc}"[:2000],
                          seconds=round(time.monotonic() - began, 2), traceback=text[-4000:])
            return None


def _hang() -> None:
    if os.environ.get("RAGGED_GPU_CHECK_HANG_HARD") == "1":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    while True:
        time.sleep(3600)


def load_target(target: str) -> Callable[[Context], None]:
    """The section function named by ``module:function``."""
    module, _, name = target.partition(":")
    fn: Callable[[Context], None] = getattr(importlib.import_module(module), name)
    return fn


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run one section of the GPU check (used by the orchestrator)")
    parser.add_argument("section")
    parser.add_argument("--target", required=True)
    parser.add_argument("--records", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True)
    parser.add_argument("--seconds", type=float, required=True, help="stop cleanly after this many seconds")
    parser.add_argument("--pages", type=int, required=True)
    parser.add_argument("--reps", type=int, required=True)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _stop)
    os.environ["RAGGED_GPU_CHECK_SMOKE"] = "1" if args.smoke else "0"  # --smoke stays on the CPU, CUDA or not
    rec = Recorder(args.records)
    ctx = Context(args.section, args.smoke, args.work, args.pages, args.reps,
                  time.monotonic() + args.seconds, rec)
    try:
        load_target(args.target)(ctx)
    except Stopped as exc:
        print(f"section {args.section}: {exc}", flush=True)
        rec.emit("stopped", reason=str(exc))
        return STOPPED_EXIT
    except Exception as exc:
        print(f"section {args.section} failed:\n{traceback.format_exc()}", flush=True)
        rec.emit("error", label="(section)", error=f"{type(exc).__name__}: {exc}"[:2000],
                 traceback=traceback.format_exc()[-4000:])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
