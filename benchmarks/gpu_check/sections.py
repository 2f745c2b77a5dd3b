"""The sections of the GPU check, in the order they run.

Each section runs in its own child process (``target`` is ``module:function``,
called with a :class:`benchmarks.gpu_check.worker.Context`), so a hang, a
crash or a poisoned CUDA context in one cannot take the others down. To add
a section, write ``run(ctx)`` in a module of this package and add one line
below; its Markdown and JSON reach ``$OUT`` as it goes.

This module imports nothing heavy: the orchestrator reads it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_BUDGET_S = 420.0  # the whole check, preflight included, on an H100


@dataclass(frozen=True)
class Section:
    """One part of the check and its share of the time budget."""

    name: str
    title: str
    target: str  # "module:function", run in a child process
    slot_s: float  # seconds kept for it at the default budget (scaled with --budget-s)
    cap_s: float | None  # the most it may take at the default budget; None: whatever is left


PREFLIGHT = Section("preflight", "Preflight", "benchmarks.gpu_check.preflight:run", slot_s=0.0, cap_s=90.0)

SECTIONS: tuple[Section, ...] = (
    Section("tests", "CUDA-marked tests", "benchmarks.gpu_check.cuda_tests:run", slot_s=45.0, cap_s=90.0),
    Section("build", "Full-size models with random weights", "benchmarks.gpu_check.build:run",
            slot_s=60.0, cap_s=120.0),
    Section("oom", "Real OOM recovery on capped cards", "benchmarks.gpu_check.oom:run", slot_s=90.0, cap_s=150.0),
    Section("workers", "Ingest on Ray, one worker per card", "benchmarks.gpu_check.workers:run",
            slot_s=30.0, cap_s=90.0),
    Section("sweep", "Adaptive batching against fixed batch sizes", "benchmarks.gpu_check.sweep:run",
            slot_s=150.0, cap_s=None),
)
