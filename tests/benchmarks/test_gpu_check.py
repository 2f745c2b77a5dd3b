"""The GPU check survives errors and deadlines: its smoke mode, on the CPU.

One full smoke run (one layer per tower, a few small pages, an error
injected into one run) is shared by the tests that read its files; the
others run the check's command line or its orchestrator on cheap sections.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.gpu_check.cuda_tests import counts, cuda_test_files
from benchmarks.gpu_check.orchestrate import Options, Orchestrator, Outcome, RecordReader, plan_seconds
from benchmarks.gpu_check.sections import SECTIONS, Section

ROOT = Path(__file__).resolve().parents[2]
INJECTED = "oom:colmodernvbert-250m forced"
STOPPED = "sweep:full card | adaptive, no prefetch*"  # the sweep's last run: a deadline's SIGTERM there


@dataclass
class Run:
    """One finished command-line run of the check."""

    code: int
    seconds: float
    out: Path
    stderr: str

    @property
    def md(self) -> str:
        return (self.out / "gpu_check.md").read_text()

    @property
    def log(self) -> str:
        return (self.out / "gpu_check.log").read_text()

    def section(self, name: str) -> dict[str, Any]:
        data = json.loads((self.out / "gpu_check.json").read_text())
        return next(s for s in data["sections"] if s["name"] == name)

    def records(self, name: str, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.section(name)["records"] if r["kind"] == kind]


def check(args: list[str], out: Path, env: dict[str, str] | None = None, timeout: float = 300) -> Run:
    """Run ``python -m benchmarks.gpu_check ARGS`` writing to ``out``."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("RAGGED_GPU_CHECK_")}
    full.update(OUT=str(out), **(env or {}))
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", *args], cwd=ROOT, env=full,
                          capture_output=True, text=True, timeout=timeout)
    return Run(done.returncode, time.monotonic() - began, out, done.stderr)


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Models and presets built once for the module."""
    return tmp_path_factory.mktemp("gpu-check-work")


@pytest.fixture(scope="module")
def smoke(work: Path, tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The whole smoke check, with an error injected into one OOM-section run and
    the sweep stopped as at its deadline before its last run."""
    out = tmp_path_factory.mktemp("gpu-check-out")
    return check(["--smoke", "--work", str(work)], out,
                 env={"RAGGED_GPU_CHECK_FAIL": INJECTED, "RAGGED_GPU_CHECK_STOP": STOPPED})


@pytest.mark.slow
def test_every_section_writes_its_markdown_and_json(smoke: Run) -> None:
    assert {p.name for p in smoke.out.iterdir()} == {"gpu_check.md", "gpu_check.json", "gpu_check.log"}
    for section in SECTIONS:
        assert f"## {section.title}" in smoke.md
        assert smoke.section(section.name)["status"] != "pending"
    assert smoke.section("preflight")["status"] == "ok"
    assert "exit 0: " in smoke.md and "skipped" in smoke.md  # the CUDA-marked tests ran, and skipped on the CPU
    assert len(smoke.records("build", "data")) == 2
    assert "| colqwen2-2b | batch 1 (reference) | full card | 2/2 |" in smoke.md
    assert "### Cap: 8 GiB" in smoke.md and "### Cap: full card" in smoke.md
    assert "[sweep]" in smoke.log and "[gpu_check] build: ok" in smoke.log  # children's output is in the log


@pytest.mark.slow
def test_an_error_in_one_run_is_recorded_and_the_rest_still_runs(smoke: Run) -> None:
    assert smoke.code == 1
    errors = smoke.records("oom", "error")
    assert [e["label"] for e in errors] == ["colmodernvbert-250m forced"]
    assert "injected failure" in errors[0]["error"] and "Traceback" in errors[0]["traceback"]
    assert "1 error(s)" in smoke.section("oom")["status"]
    runs = [(r["label"]) for r in smoke.records("oom", "run")]
    assert runs == ["batch 1 (reference)", "adaptive (up to 2)", "batch 1 (reference)", "fixed 2, recovery on",
                    "adaptive (up to 2)"]  # the same model's next run, then the other model
    assert smoke.records("sweep", "run")  # the next section ran
    assert "injected failure" in smoke.md and "Traceback" in smoke.log


@pytest.mark.slow
def test_a_section_stopped_at_its_deadline_still_reports_its_runs(smoke: Run) -> None:
    assert smoke.section("sweep")["status"].startswith("stopped at its deadline")
    assert smoke.records("sweep", "stopped")
    runs = smoke.records("sweep", "run")
    assert len(runs) == 11 and all(r["status"] in ("ok", "oom") for r in runs)  # all but the last of 12
    assert [s["cap"] for s in (d for d in smoke.records("sweep", "data") if d["what"] == "summary")] == [
        "8 GiB", "full card"]  # the tables were written from the runs done
    full = smoke.md.split("### Cap: full card")[1]
    assert "| adaptive | by ragged |" in full and "adaptive, no prefetch" not in full


@pytest.mark.slow
def test_forced_ooms_are_asserted_and_recovered(smoke: Run) -> None:
    checks = {c["name"]: c for c in smoke.records("oom", "check")}
    assert checks["colqwen2-2b forced OOM"]["ok"], checks["colqwen2-2b forced OOM"]["detail"]
    assert checks["colqwen2-2b pages back"]["ok"] and checks["colqwen2-2b matches batch 1"]["ok"]
    forced = next(r for r in smoke.records("oom", "run") if r["label"].startswith("fixed"))
    assert forced["ooms_seen"] == 1 and forced["ooms_reported"] == 1 and forced["batch_sizes"] == [1, 1]


@pytest.mark.slow
def test_the_sweep_compares_like_with_like(smoke: Run) -> None:
    runs = smoke.records("sweep", "run")
    seen = {(r["cap"], r["label"], r["order"]) for r in runs}
    for cap in ("8 GiB", "full card"):
        for size in (2, 4):
            assert {(cap, f"fixed {size}", "input"), (cap, f"fixed {size}", "sorted")} <= seen
        assert (cap, "adaptive", "by ragged") in seen
    assert ("8 GiB", "adaptive, no prefetch", "by ragged") in seen  # on the full card, stopped before it
    oom = [r for r in runs if r["cap"] == "8 GiB" and r["label"] == "fixed 4"]
    assert {r["status"] for r in oom} == {"oom"}  # no recovery for the baseline at the emulated 2-page card
    ok = [r for r in runs if r["status"] == "ok"]
    assert ok and all(r["prepare_s"] > 0 and r["model_s"] > 0 and r["batches"] for r in ok)
    for r in ok:
        assert sum(b["pages"] for b in r["batches"]) == r["pages"]
    assert "Sorting alone" in smoke.md and "Sizing: adaptive / best fixed sorted" in smoke.md


@pytest.mark.slow
def test_a_hung_section_is_stopped_and_the_next_still_runs(smoke: Run, work: Path, tmp_path: Path) -> None:
    run = check(["--smoke", "--work", str(work), "--sections", "tests,build,sweep", "--section-s", "tests=5",
                 "--section-s", "sweep=1", "--kill-grace-s", "5"], tmp_path, env={"RAGGED_GPU_CHECK_HANG": "tests:*"})
    assert run.code == 1
    assert run.section("tests")["status"].startswith("timed out")
    assert run.records("tests", "stopped")  # the worker stopped itself on SIGTERM
    assert run.section("build")["status"] == "ok"  # reused models: the next section ran
    assert run.section("sweep")["status"].startswith("skipped")
    assert "timed out" in run.md and "[gpu_check] tests: past its 5 s, stopping it" in run.log


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="with CUDA this would run the whole GPU check")
def test_without_cuda_the_preflight_fails_in_seconds(tmp_path: Path) -> None:
    run = check([], tmp_path)
    assert run.code == 3
    assert run.seconds < 60
    assert "no CUDA device visible" in run.stderr and "--smoke" in run.stderr
    assert "no CUDA device visible" in run.md
    assert run.section("tests")["status"] == "not run (preflight failed)"
    assert "no CUDA device visible" in run.log


def orchestrator(tmp_path: Path, section: Section, grace: float) -> Orchestrator:
    options = Options(smoke=True, out=tmp_path / "out", work=tmp_path / "work", pages=1, reps=1, budget_s=60,
                      sections=[section], caps={}, kill_grace_s=grace, own_work=False)
    return Orchestrator(options, [])


@pytest.mark.slow
def test_a_section_that_ignores_sigterm_is_killed(tmp_path: Path) -> None:
    section = Section("hang", "Hangs", "benchmarks.gpu_check.cuda_tests:run", slot_s=1, cap_s=1)
    os.environ["RAGGED_GPU_CHECK_HANG"] = "hang:*"
    os.environ["RAGGED_GPU_CHECK_HANG_HARD"] = "1"
    try:
        o = orchestrator(tmp_path, section, grace=1)
        outcome = Outcome(section)
        o.outcomes.append(outcome)
        began = time.monotonic()
        o.run_section(outcome, 2)
    finally:
        del os.environ["RAGGED_GPU_CHECK_HANG"], os.environ["RAGGED_GPU_CHECK_HANG_HARD"]
    assert time.monotonic() - began < 15
    assert outcome.status.startswith("timed out") and outcome.exit_code == -9
    assert "killing it" in (tmp_path / "out" / "gpu_check.log").read_text()
    assert "## Hangs" in (tmp_path / "out" / "gpu_check.md").read_text()


def test_later_sections_keep_their_slots() -> None:
    sections = [Section(n, n, "m:f", slot_s=s, cap_s=c) for n, s, c in (("a", 10, 20), ("b", 30, None))]
    assert plan_seconds(sections, 0, remaining=100, scale=1, caps={}) == 20  # its cap
    assert plan_seconds(sections, 0, remaining=35, scale=1, caps={}) == 5  # b keeps 30
    assert plan_seconds(sections, 1, remaining=70, scale=1, caps={}) == 70  # the last takes what is left
    assert plan_seconds(sections, 0, remaining=100, scale=0.5, caps={}) == 10  # scaled with the budget
    assert plan_seconds(sections, 1, remaining=70, scale=1, caps={"b": 3}) == 3
    assert plan_seconds(sections, 0, remaining=20, scale=1, caps={}) == 0


def test_records_are_read_line_by_line_as_they_come(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    reader = RecordReader(path)
    assert reader.new() == []
    path.write_text('{"kind": "md", "text": "a"}\n{"kind": "md"')
    assert reader.new() == [{"kind": "md", "text": "a"}]
    with path.open("a") as f:
        f.write(', "text": "b"}\n')
    assert reader.new() == [{"kind": "md", "text": "b"}]


def test_pytest_summary_and_cuda_files() -> None:
    assert counts(["...", "2 passed, 1 failed, 3 deselected in 1.2s"]) == {"passed": 2, "failed": 1, "deselected": 3}
    assert counts(["= 1 error in 0.1s ="]) == {"errors": 1}
    files = cuda_test_files()
    assert files and all(f.startswith("tests/") for f in files)
    assert "tests/benchmarks/test_gpu_check.py" not in files
