"""An embedding worker of a distributed ingest: one device, one embedder.

Each worker (a Ray actor) is an entry point: it builds its own
:class:`~ragged.gpu.runtime.Runtime` on its device and holds a
:class:`ColPaliEmbedder` under it, with ragged's adaptive batching and OOM
recovery there (cards of different sizes each find their own batch size),
and the text model beside it when the index has a text side. Workers never write the index: they send
page results back to the driver, the single writer. Plain Python: the
driver makes it a Ray actor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ragged.gpu.batch_runner import ItemFailure
from ragged.gpu.policy import MemoryPolicy
from ragged.index.store import StoredPage
from ragged.ingest.documents import RenderedPage
from ragged.ingest.report import WorkerReport
from ragged.ingest.text_side import TextSide


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


class EmbedWorker:
    """Embeds batches of pages on this process's device."""

    def __init__(self, config: WorkerConfig, name: str) -> None:
        import torch

        from ragged.embeddings.colpali_embedder import ColPaliEmbedder
        from ragged.gpu.runtime import Runtime

        if config.threads:
            torch.set_num_threads(config.threads)
        device = config.device  # chosen by the worker's device manager, as in one process
        self.runtime = Runtime(policy=config.policy)
        self.embedder = ColPaliEmbedder(config.model, device=device, batch_size=config.batch_size,
                                        cache_dir=config.cache_dir, runtime=self.runtime)
        self.text = TextSide(None)
        if config.text_model:
            from ragged.text.embedder import TextEmbedder

            self.text = TextSide(TextEmbedder(config.text_model, device, cache_dir=config.cache_dir,
                                              runtime=self.runtime))
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
        run = self.embedder.embed_pages([page.image for page in pages])
        self.report.vision.absorb(run.report)
        results = run.results
        texts = [page.text for page in pages]
        vectors = self._text_vectors(texts)
        out = []
        for job, page, result, text_vectors in zip(jobs, pages, results, vectors, strict=True):
            if isinstance(result, ItemFailure) or not isinstance(result, PageVectors):
                reason = result.reason if isinstance(result, ItemFailure) else "no result"
                out.append(PageResult(job.doc_hash, job.number, None, reason))
                continue
            out.append(PageResult(job.doc_hash, job.number, StoredPage(result.vectors.astype(np.float16),
                                                                          result.grid, page.text, text_vectors)))
        return out

    def _text_vectors(self, texts: list[str]) -> list[np.ndarray | None]:
        if not self.text.on:
            return [None] * len(texts)
        return list(self.text.vectors(texts, self.report.text))

    def finish(self) -> WorkerReport:
        """This worker's report; its models are released."""
        self.embedder.close()
        self.text.close()
        self.runtime.close()
        return self.report
