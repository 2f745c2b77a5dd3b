"""The resource report at the end of an ingest run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragged.embeddings.report import EmbeddingReport
from ragged.ingest.documents import InputProblem
from ragged.ingest.tally import add_embedding, add_tally
from ragged.ingest.worker import WorkerReport


@dataclass
class IngestReport:
    """What an ingest run did and what it used (memory in bytes, None: unknown)."""

    index: str
    model: str
    device: str = ""
    dtype: str = ""
    device_total_bytes: int = 0
    model_bytes: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    prepare_seconds: float = 0.0
    compute_seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    budget_bytes: int | None = None
    budget_warning: str | None = None
    placement_note: str | None = None
    batch_room_bytes: int | None = None
    ooms: int = 0
    recoveries: dict[str, int] = field(default_factory=dict)
    cpu_fallback_pages: int = 0
    failed_pages: int = 0
    documents_added: int = 0
    documents_replaced: int = 0
    documents_moved: int = 0
    documents_removed: int = 0
    pages_added: int = 0
    pages_without_text: int = 0
    documents_skipped: int = 0
    documents_text_added: int = 0  # stored before the text side, given it now
    duplicates: int = 0
    text_model: str | None = None
    passages: int = 0
    text_seconds: float = 0.0
    problems: list[InputProblem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    workers: list[WorkerReport] = field(default_factory=list)  # a distributed run, one per worker

    @property
    def pages_per_second(self) -> float:
        """Image embedding throughput (pages over the vision model's time)."""
        return self.pages_added / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def overall_pages_per_second(self) -> float:
        """Pages over the whole run: rendering, both models, commits."""
        return self.pages_added / self.seconds if self.seconds > 0 else 0.0

    def absorb(self, part: EmbeddingReport) -> None:
        """Add one embedding call's figures."""
        self.device, self.dtype, self.device_total_bytes = part.device, part.dtype, part.device_total_bytes
        self.model_bytes = part.model_bytes
        self.embed_seconds += part.seconds
        self.prepare_seconds += part.prepare_seconds
        self.compute_seconds += part.compute_seconds
        add_embedding(self, part)
        if part.budget_bytes is not None:
            self.budget_bytes = part.budget_bytes
        self.budget_warning = self.budget_warning or part.budget_warning
        self.placement_note = self.placement_note or part.placement_note
        if part.batch_room_bytes is not None:
            self.batch_room_bytes = part.batch_room_bytes

    def absorb_worker(self, part: WorkerReport) -> None:
        """Add one distributed worker's figures."""
        add_tally(self, part)
        self.passages += part.passages
        self.text_seconds += part.text_seconds

    @property
    def failed(self) -> bool:
        """True when any input could not be used (the others were still
        processed): the command's exit status says so to scripts."""
        return bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        return {
            "index": self.index,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "device_total_bytes": self.device_total_bytes,
            "model_bytes": self.model_bytes,
            "placement_note": self.placement_note,
            "seconds": round(self.seconds, 3),
            "pages_per_second": round(self.pages_per_second, 3),
            "overall_pages_per_second": round(self.overall_pages_per_second, 3),
            "prepare_seconds": round(self.prepare_seconds, 3),
            "compute_seconds": round(self.compute_seconds, 3),
            "batch_sizes": sorted(set(self.batch_sizes)),
            "batches": len(self.batch_sizes),
            "peak_bytes": self.peak_bytes,
            "budget_bytes": self.budget_bytes,
            "budget_warning": self.budget_warning,
            "batch_room_bytes": self.batch_room_bytes,
            "ooms": self.ooms,
            "recoveries": {k: v for k, v in self.recoveries.items() if v},
            "cpu_fallback_pages": self.cpu_fallback_pages,
            "failed_pages": self.failed_pages,
            "documents_added": self.documents_added,
            "documents_replaced": self.documents_replaced,
            "documents_moved": self.documents_moved,
            "documents_removed": self.documents_removed,
            "pages_added": self.pages_added,
            "pages_without_text": self.pages_without_text,
            "documents_skipped": self.documents_skipped,
            "documents_text_added": self.documents_text_added,
            "duplicates": self.duplicates,
            "text_model": self.text_model,
            "passages": self.passages,
            "text_seconds": round(self.text_seconds, 3),
            "notes": list(self.notes),
            "workers": [{"worker": w.worker, "device": w.device, "pages": w.pages,
                         "pages_per_second": round(w.pages_per_second, 3), "batch_sizes": sorted(set(w.batch_sizes)),
                         "peak_bytes": w.peak_bytes, "ooms": w.ooms, "recoveries": w.recoveries,
                         "cpu_fallback_pages": w.cpu_fallback_pages, "failed_pages": w.failed_pages}
                        for w in self.workers],
            "errors": [{"path": p.path, "error": p.message} for p in self.problems],
        }
