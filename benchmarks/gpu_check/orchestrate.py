"""Runs the GPU check's sections one child process at a time, each under
its own deadline, and keeps ``$OUT`` up to date while they run.

The orchestrator imports neither torch nor ragged, and never touches the
GPU itself: a CUDA context here would sit in every section's readings.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from benchmarks.gpu_check.sections import DEFAULT_BUDGET_S, PREFLIGHT, SECTIONS, Section
from benchmarks.gpu_check.worker import ROOT, STOPPED_EXIT

PREFLIGHT_FAILED_EXIT = 3
MIN_SECTION_S = 5.0  # a section offered less than this is skipped


@dataclass
class Outcome:
    """One section as it stands: Markdown lines, raw records and status."""

    section: Section
    status: str = "pending"
    seconds: float = 0.0
    allowed_s: float | None = None
    exit_code: int | None = None
    md: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)

    def problems(self) -> list[str]:
        """Errors and failed checks recorded so far, as short texts."""
        out = [f"error in {r.get('label')}: {r.get('error')}" for r in self.records if r["kind"] == "error"]
        out += [f"check failed: {r['name']}: {r['detail']}" for r in self.records
                if r["kind"] == "check" and not r["ok"]]
        return out

    def to_json(self) -> dict[str, Any]:
        return {"name": self.section.name, "title": self.section.title, "status": self.status,
                "seconds": round(self.seconds, 1), "allowed_s": self.allowed_s, "exit_code": self.exit_code,
                "problems": self.problems(), "records": [r for r in self.records if r["kind"] != "md"]}


def plan_seconds(sections: Sequence[Section], index: int, remaining: float, scale: float,
                 caps: dict[str, float]) -> float:
    """Seconds section ``index`` may take: what is left after keeping the
    later sections' slots, and no more than its cap (``caps`` overrides;
    slots and caps scale with the budget)."""
    later = sum(s.slot_s * scale for s in sections[index + 1:])
    own = sections[index]
    cap = caps.get(own.name, own.cap_s * scale if own.cap_s is not None else float("inf"))
    return max(0.0, min(cap, remaining - later))


class Report:
    """The three files under the output folder, rewritten as results arrive:
    ``gpu_check.md`` (for people), ``gpu_check.json`` (raw), ``gpu_check.log``."""

    def __init__(self, out: Path, header: list[str], meta: dict[str, Any], outcomes: list[Outcome]) -> None:
        self.out = out
        self.header = header
        self.meta = meta
        self.outcomes = outcomes
        out.mkdir(parents=True, exist_ok=True)
        self.log_file: IO[str] = (out / "gpu_check.log").open("a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def log(self, line: str) -> None:
        """A line to stdout and the log file."""
        with self._lock:
            print(line, flush=True)
            self.log_file.write(line + "\n")

    def markdown(self) -> str:
        lines = [*self.header, "", "| section | status | seconds |", "|---|---|---|"]
        lines += [f"| {o.section.title} | {o.status} | {o.seconds:.0f} |" for o in self.outcomes]
        for o in self.outcomes:
            if o.status == "pending":
                continue
            lines += ["", f"## {o.section.title}", "", f"*{o.status}, {o.seconds:.0f} s*", ""]
            lines += o.md
            problems = o.problems()
            if problems:
                lines += ["", "Problems:", *[f"- {p}" for p in problems[:20]]]
        if "total_s" in self.meta:
            lines += ["", f"Total: {self.meta['total_s']:.0f} s, exit code {self.meta['exit_code']}."]
        return "\n".join(lines) + "\n"

    def write(self) -> None:
        """Rewrite the Markdown and JSON files (atomically)."""
        data = {**self.meta, "sections": [o.to_json() for o in self.outcomes]}
        _atomic_write(self.out / "gpu_check.md", self.markdown())
        _atomic_write(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str) + "\n")


def _atomic_write(path: Path, text: str) -> None:
    staging = path.with_name(f".{path.name}.tmp")
    staging.write_text(text, encoding="utf-8")
    os.replace(staging, path)


class RecordReader:
    """Reads the complete lines a worker has appended so far."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0

    def new(self) -> list[dict[str, Any]]:
        if not self.path.exists():
            return []
        with self.path.open("rb") as f:
            f.seek(self.offset)
            chunk = f.read()
        end = chunk.rfind(b"\n") + 1
        self.offset += end
        out = []
        for raw in chunk[:end].splitlines():
            try:
                out.append(json.loads(raw))
            except json.JSONDecodeError:
                out.append({"kind": "error", "label": "(records)", "error": f"unreadable record: {raw[:200]!r}"})
        return out


def _tee(stream: IO[str], report: Report, prefix: str) -> None:
    for line in stream:
        report.log(prefix + line.rstrip("\n"))


def _signal_group(proc: subprocess.Popen[str], sig: int) -> None:
    with suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@dataclass
class Options:
    """What the command line asked for."""

    smoke: bool
    out: Path
    work: Path
    pages: int
    reps: int
    budget_s: float
    sections: list[Section]
    caps: dict[str, float]  # --section-s: the most a section may take
    kill_grace_s: float
    own_work: bool  # the work folder was made here, and is removed at the end


class Orchestrator:
    """Runs the preflight, then each section within its share of the budget."""

    def __init__(self, options: Options, argv: Sequence[str]) -> None:
        self.o = options
        self.start = time.monotonic()
        self.outcomes = [Outcome(PREFLIGHT), *[Outcome(s) for s in options.sections]]
        mode = ("SMOKE: CPU, one layer per tower, OOMs emulated; not GPU results" if options.smoke
                else "full size on CUDA")
        started = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
        header = [f"# ragged GPU check, {started}", "",
                  f"- mode: {mode}; budget {options.budget_s:.0f} s; pages {options.pages}; reps {options.reps}",
                  f"- command: `{' '.join(['python -m benchmarks.gpu_check', shlex.join(argv)]).strip()}`"]
        meta = {"check": "ragged GPU check", "started": started, "smoke": options.smoke, "argv": list(argv),
                "budget_s": options.budget_s, "pages": options.pages, "reps": options.reps}
        self.report = Report(options.out, header, meta, self.outcomes)

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
                   TOKENIZERS_PARALLELISM="false", RAGGED_CACHE_DIR=str(self.o.work / "cache"))
        return env

    def run_section(self, outcome: Outcome, allowed: float) -> None:
        """Run one section in a child process; stop it at ``allowed`` seconds."""
        section = outcome.section
        outcome.allowed_s = round(allowed, 1)
        grace = min(15.0, max(1.0, 0.1 * allowed))  # the worker stops itself this long before the kill
        records = self.o.work / "records" / f"{section.name}.jsonl"
        records.parent.mkdir(parents=True, exist_ok=True)
        records.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "benchmarks.gpu_check.worker", section.name, "--target", section.target,
               "--records", str(records), "--work", str(self.o.work), "--seconds", f"{allowed - grace:.1f}",
               "--pages", str(self.o.pages), "--reps", str(self.o.reps), *(["--smoke"] if self.o.smoke else [])]
        self.report.log(f"[gpu_check] {section.name}: start, {allowed:.0f} s allowed")
        outcome.status = "running"
        self.report.write()
        began = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
        assert proc.stdout is not None
        tee = threading.Thread(target=_tee, args=(proc.stdout, self.report, f"[{section.name}] "), daemon=True)
        tee.start()
        reader = RecordReader(records)
        try:
            code, timed_out = self._watch(proc, outcome, reader, allowed, began)
        finally:
            _signal_group(proc, signal.SIGKILL)  # anything the section left behind in its group
        tee.join(timeout=5)
        self._take(outcome, reader.new())
        outcome.exit_code = code
        outcome.seconds = time.monotonic() - began
        outcome.status = self._status(outcome, code, timed_out)
        self.report.log(f"[gpu_check] {section.name}: {outcome.status} in {outcome.seconds:.0f} s")
        self.report.write()

    def _watch(self, proc: subprocess.Popen[str], outcome: Outcome, reader: RecordReader, allowed: float,
               began: float) -> tuple[int | None, bool]:
        """Keep the files current until the child ends; SIGTERM at ``allowed``,
        SIGKILL after the grace; give up on a child that will not die."""
        name = outcome.section.name
        term_at: float | None = None
        kill_at: float | None = None
        last_write = began
        while True:
            code = proc.poll()
            fresh = reader.new()
            now = time.monotonic()
            outcome.seconds = now - began
            if fresh or now - last_write > 5:
                self._take(outcome, fresh)
                self.report.write()
                last_write = now
            if code is not None:
                return code, term_at is not None
            if term_at is None and now - began > allowed:
                self.report.log(f"[gpu_check] {name}: past its {allowed:.0f} s, stopping it")
                _signal_group(proc, signal.SIGTERM)
                term_at = now
            elif term_at is not None and kill_at is None and now - term_at > self.o.kill_grace_s:
                self.report.log(f"[gpu_check] {name}: still running, killing it")
                _signal_group(proc, signal.SIGKILL)
                kill_at = now
            elif kill_at is not None and now - kill_at > 30:
                self.report.log(f"[gpu_check] {name}: does not die; going on without it")
                return None, True
            time.sleep(0.2)

    @staticmethod
    def _take(outcome: Outcome, fresh: list[dict[str, Any]]) -> None:
        for record in fresh:
            outcome.records.append(record)
            if record["kind"] == "md":
                outcome.md.append(record["text"])

    @staticmethod
    def _status(outcome: Outcome, code: int | None, timed_out: bool) -> str:
        errors = sum(r["kind"] == "error" for r in outcome.records)
        failed = sum(r["kind"] == "check" and not r["ok"] for r in outcome.records)
        if timed_out:
            status = f"timed out after {outcome.seconds:.0f} s (results above are partial)"
        elif code is None or code < 0:
            status = f"crashed (signal {-code if code is not None else '?'})"
        elif code not in (0, STOPPED_EXIT):
            status = f"crashed (exit {code})"
        elif code == STOPPED_EXIT:
            status = "stopped at its deadline (results above are partial)"
        else:
            status = "ok"
        extra = [f"{errors} error(s)"] * bool(errors) + [f"{failed} failed check(s)"] * bool(failed)
        if extra:
            status = ("; ".join(extra) if status == "ok" else f"{status}; " + "; ".join(extra))
        return status

    def remaining(self) -> float:
        return self.o.budget_s - (time.monotonic() - self.start)

    def run(self) -> int:
        """The whole check; returns the exit code."""
        self.report.write()
        preflight = self.outcomes[0]
        self.run_section(preflight, PREFLIGHT.cap_s or 90.0)  # seconds when it passes; never squeezed
        if preflight.status != "ok":
            for outcome in self.outcomes[1:]:
                outcome.status = "not run (preflight failed)"
            return self.finish(PREFLIGHT_FAILED_EXIT, preflight.problems())
        scale = self.o.budget_s / DEFAULT_BUDGET_S
        for index, outcome in enumerate(self.outcomes[1:]):
            allowed = plan_seconds(self.o.sections, index, self.remaining(), scale, self.o.caps)
            if allowed < MIN_SECTION_S:
                outcome.status = f"skipped ({allowed:.0f} s left for it, under the {MIN_SECTION_S:.0f} s minimum)"
                self.report.log(f"[gpu_check] {outcome.section.name}: {outcome.status}")
                self.report.write()
                continue
            self.run_section(outcome, allowed)
        code = 0 if all(o.status == "ok" for o in self.outcomes) else 1
        return self.finish(code, [])

    def finish(self, code: int, messages: list[str]) -> int:
        self.report.meta.update(total_s=round(time.monotonic() - self.start, 1), exit_code=code,
                                finished=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"))
        self.report.write()
        self.report.log("")
        self.report.log(self.report.markdown())
        for message in messages:
            print(f"gpu_check: {message}", file=sys.stderr, flush=True)
        return code


def _parse_caps(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, seconds = item.partition("=")
        out[name.strip()] = float(seconds)
    return out


def parse_options(argv: Sequence[str]) -> Options:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check",
                                     description="GPU check of ragged's resource management")
    parser.add_argument("--smoke", action="store_true",
                        help="the same code paths on the CPU: one layer per tower, OOMs emulated")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: $OUT, else ./out)")
    parser.add_argument("--work", type=Path, default=None,
                        help="scratch folder for models and records (default: a temporary one, removed)")
    parser.add_argument("--pages", type=int, default=None, help="pages per sweep run (default 48; smoke 3)")
    parser.add_argument("--reps", type=int, default=None, help="sweep repetitions at most (default 3; smoke 1)")
    parser.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                        help="the whole check's time, shared among the sections")
    parser.add_argument("--sections", default=",".join(s.name for s in SECTIONS),
                        help="comma-separated subset, in the usual order")
    parser.add_argument("--section-s", action="append", default=[], metavar="NAME=SECONDS",
                        help="the most one section may take (repeatable)")
    parser.add_argument("--kill-grace-s", type=float, default=10.0,
                        help="after SIGTERM at a deadline, wait this long before SIGKILL")
    args = parser.parse_args(argv)
    wanted = [n.strip() for n in args.sections.split(",") if n.strip()]
    unknown = set(wanted) - {s.name for s in SECTIONS}
    if unknown:
        parser.error(f"unknown section(s): {', '.join(sorted(unknown))}")
    out = args.out or Path(os.environ.get("OUT") or ROOT / "out")
    work = args.work or Path(tempfile.mkdtemp(prefix="ragged-gpu-check-"))
    return Options(
        smoke=args.smoke, out=out, work=work, pages=args.pages or (3 if args.smoke else 48),
        reps=args.reps or (1 if args.smoke else 3), budget_s=args.budget_s,
        sections=[s for s in SECTIONS if s.name in wanted], caps=_parse_caps(args.section_s),
        kill_grace_s=args.kill_grace_s, own_work=args.work is None,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(args)
    try:
        return Orchestrator(options, args).run()
    finally:
        if options.own_work:
            shutil.rmtree(options.work, ignore_errors=True)
