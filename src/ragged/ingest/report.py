"""The report of an ingest run: documents and pages, and what the models did.

The models' figures are the one stats family: ``vision`` sums every page
embedding call and ``text`` every passage embedding call
(:class:`~ragged.embeddings.report.EmbeddingReport`, items being pages and
passages), and a distributed run adds a :class:`WorkerReport` per worker
with the same two records. :meth:`IngestReport.to_dict` serialises it all
through the one serialiser (:func:`ragged.gpu.stats.plain`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ragged.embeddings.report import EmbeddingReport
from ragged.gpu.stats import plain
from ragged.ingest.documents import InputProblem


@dataclass
class WorkerReport:
    """What one distributed worker did."""

    worker: str
    device: str = ""
    vision: EmbeddingReport = field(default_factory=EmbeddingReport)
    text: EmbeddingReport = field(default_factory=EmbeddingReport)

    @property
    def pages(self) -> int:
        """Pages this worker embedded."""
        return self.vision.items - self.vision.failed_items

    @property
    def pages_per_second(self) -> float:
        """This worker's own throughput."""
        return self.pages / self.vision.seconds if self.vision.seconds > 0 else 0.0

if TYPE_CHECKING:
    from ragged.ingest.conversion import Conversion


@dataclass
class IngestReport:
    """What an ingest run did and what it used (memory in bytes, None: unknown)."""

    index: str
    model: str
    seconds: float = 0.0  # the whole run
    embed_seconds: float = 0.0  # embedding pages and passages (wall time over every worker when distributed)
    vision: EmbeddingReport = field(default_factory=EmbeddingReport)
    text: EmbeddingReport = field(default_factory=EmbeddingReport)
    text_model: str | None = None
    documents_added: int = 0
    documents_replaced: int = 0
    documents_moved: int = 0
    documents_removed: int = 0
    pages_added: int = 0
    pages_without_text: int = 0
    documents_skipped: int = 0
    documents_text_added: int = 0  # stored before the text side, given it now
    duplicates: int = 0
    problems: list[InputProblem] = field(default_factory=list)
    skipped: list[InputProblem] = field(default_factory=list)  # files not read, named (other kinds; no LibreOffice)
    documents_converted: int = 0  # converted to PDF by LibreOffice in this run
    pages_converted: int = 0
    convert_seconds: float = 0.0
    convert_peak_bytes: int = 0  # the largest LibreOffice process tree's resident memory
    convert_workers: int = 0
    notes: list[str] = field(default_factory=list)
    workers: list[WorkerReport] = field(default_factory=list)  # a distributed run, one per worker
    device: str = ""  # where the pages were embedded (a summary of the workers' devices when distributed)

    @property
    def pages_per_second(self) -> float:
        """Pages added per second of embedding (images and text, every worker)."""
        return self.pages_added / self.embed_seconds if self.embed_seconds > 0 else 0.0

    @property
    def overall_pages_per_second(self) -> float:
        """Pages over the whole run: rendering, both models, commits."""
        return self.pages_added / self.seconds if self.seconds > 0 else 0.0

    def absorb(self, part: EmbeddingReport) -> None:
        """Add one page embedding call's figures."""
        self.vision.absorb(part)
        self.device = part.device or self.device

    def absorb_conversion(self, part: Conversion) -> None:
        """Add what converting Office, web and text files gave."""
        self.problems.extend(part.problems)
        self.skipped.extend(part.skipped)
        self.documents_converted += part.converted
        self.pages_converted += part.pages
        self.convert_seconds += part.seconds
        self.convert_peak_bytes = max(self.convert_peak_bytes, part.peak_rss_bytes)
        self.convert_workers = max(self.convert_workers, part.workers)

    def absorb_worker(self, part: WorkerReport) -> None:
        """Add one distributed worker's figures."""
        self.workers.append(part)
        self.vision.absorb(part.vision)
        self.text.absorb(part.text)

    @property
    def failed(self) -> bool:
        """True when any input could not be used (the others were still
        processed): the command's exit status says so to scripts."""
        return bool(self.problems)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``--json``."""
        data: dict[str, Any] = plain(self)
        for name in ("problems", "skipped", "documents_converted", "pages_converted", "convert_seconds",
                     "convert_peak_bytes", "convert_workers"):
            data.pop(name)
        data["pages_per_second"] = round(self.pages_per_second, 3)
        data["overall_pages_per_second"] = round(self.overall_pages_per_second, 3)
        for worker, source in zip(data["workers"], self.workers, strict=True):
            worker["pages"], worker["pages_per_second"] = source.pages, round(source.pages_per_second, 3)
        data["errors"] = [{"path": p.path, "error": p.message} for p in self.problems]
        data["skipped"] = [{"path": p.path, "reason": p.message} for p in self.skipped]
        data["converted"] = {"documents": self.documents_converted, "pages": self.pages_converted,
                             "seconds": round(self.convert_seconds, 3), "peak_bytes": self.convert_peak_bytes,
                             "workers": self.convert_workers}
        return data


__all__ = ["IngestReport", "WorkerReport"]
