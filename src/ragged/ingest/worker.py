"""An embedding worker of a distributed ingest: one device, one embedder.

Each worker (a Ray actor) holds a :class:`ColPaliEmbedder` on its own
device, with ragged's adaptive batching and OOM recovery there (cards of
different sizes each find their own batch size), and the text model beside
it when the index has a text side. Workers never write the index: they send
page results back to the driver, the single writer. Plain Python: the
driver makes it a Ray actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ragged.embeddings.report import EmbeddingReport
from ragged.gpu.batch_runner import ItemFailure
from ragged.gpu.model_manager import ModelManager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.policy import MemoryPolicy
from ragged.index.catalog import PatchGrid
from ragged.index.store import StoredPage
from ragged.ingest.documents import RenderedPage
from ragged.ingest.tally import add_embedding


@dataclass(frozen=True)
class WorkerConfig:
    """What every worker needs to start."""

    model: str
    text_model: str | None
    cache_dir: Path | None
    policy: MemoryPolicy
    batch_size: int | None = None
    threads: int | None = None  # torch threads (CPU workers share the cores)
    device: str | None = None  # a device kind ("cpu", "cuda"; None: auto): each worker sees only its own card


@dataclass(frozen=True)
class PageJob:
    """One page to embed: which document and page, and the page itself (or a
    reference to it in Ray's object store)."""

    doc_hash: str
    number: int  # 0-based
    page: RenderedPage | Any


@dataclass(frozen=True)
class PageResult:
    """A page embedded (``page``), or why it could not be (``error``)."""

    doc_hash: str
    number: int
    page: StoredPage | None
    error: str | None = None


@dataclass
class WorkerReport:
    """What one worker did (memory in bytes)."""

    worker: str
    device: str = ""
    pages: int = 0
    seconds: float = 0.0
    batch_sizes: list[int] = field(default_factory=list)
    peak_bytes: int | None = None
    ooms: int = 0
    recoveries: dict[str, int] = field(default_factory=dict)
    cpu_fallback_pages: int = 0
    failed_pages: int = 0
    passages: int = 0
    text_seconds: float = 0.0

    @property
    def pages_per_second(self) -> float:
        """This worker's own throughput."""
        return self.pages / self.seconds if self.seconds > 0 else 0.0


class EmbedWorker:
    """Embeds batches of pages on this process's device."""

    def __init__(self, config: WorkerConfig, name: str) -> None:
        import torch

        from ragged.embeddings.colpali_embedder import ColPaliEmbedder
        from ragged.gpu import default_device_manager

        if config.threads:
            torch.set_num_threads(config.threads)
        manager = default_device_manager()
        device = config.device  # chosen by the device manager, as in one process
        self.models = ModelManager(manager, idle_timeout_s=None, policy=config.policy)
        handler = OOMHandler(manager)
        self.embedder = ColPaliEmbedder(config.model, device=device, batch_size=config.batch_size,
                                        cache_dir=config.cache_dir, policy=config.policy, model_manager=self.models,
                                        oom_handler=handler)
        from ragged.ingest.text_side import TextSide  # it imports the report, which imports this module

        self.text = TextSide(None)
        if config.text_model:
            from ragged.text.embedder import TextEmbedder

            self.text = TextSide(TextEmbedder(config.text_model, device, cache_dir=config.cache_dir,
                                              device_manager=manager, model_manager=self.models,
                                              policy=config.policy, oom_handler=handler))
        self.report = WorkerReport(name, self.embedder.device.label)

    def pid(self) -> int:
        """This worker's process id."""
        return os.getpid()

    def embed(self, jobs: list[PageJob]) -> list[PageResult]:
        """Embed the pages (and their text); one result per job, in order."""
        from ragged.embeddings.colpali_embedder import PageVectors

        pages = [job.page for job in jobs]
        if pages and not isinstance(pages[0], RenderedPage):  # references: fetched straight from the store
            import ray

            pages = ray.get(list(pages))  # type: ignore[arg-type]
        results = self.embedder.embed_pages([page.image for page in pages])
        self._absorb(self.embedder.last_report)
        texts = [page.text for page in pages]
        vectors = self._text_vectors(texts)
        out = []
        for job, page, result, text_vectors in zip(jobs, pages, results, vectors, strict=True):
            if isinstance(result, ItemFailure) or not isinstance(result, PageVectors):
                reason = result.reason if isinstance(result, ItemFailure) else "no result"
                out.append(PageResult(job.doc_hash, job.number, None, reason))
                continue
            grid = PatchGrid(result.grid.start, result.grid.rows, result.grid.cols) if result.grid else None
            out.append(PageResult(job.doc_hash, job.number, StoredPage(result.vectors.astype(np.float16), grid,
                                                                          page.text, text_vectors)))
        return out

    def _text_vectors(self, texts: list[str]) -> list[np.ndarray | None]:
        if not self.text.on:
            return [None] * len(texts)
        return list(self.text.vectors(texts, self.report))

    def _absorb(self, part: EmbeddingReport | None) -> None:
        if part is None:
            return
        self.report.pages += part.items - part.failed_items
        self.report.seconds += part.seconds
        add_embedding(self.report, part)

    def finish(self) -> WorkerReport:
        """This worker's report; its models are released."""
        self.embedder.close()
        self.text.close()
        self.models.close()
        return self.report
