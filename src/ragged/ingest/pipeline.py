"""Ingest: files in, pages embedded with resource management, index out.

Pages are rendered and embedded in a stream (a bounded buffer across
documents, so small documents share batches); each document is committed
whole once all its pages are embedded. Inputs that fail are reported and
skipped; the rest go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from ragged.embeddings.colpali_embedder import ColPaliEmbedder
from ragged.errors import InputError, OutOfMemoryRecoveryError
from ragged.gpu.device_manager import DeviceHint
from ragged.index.store import IndexStore
from ragged.ingest.documents import Document, InputProblem, discover, inspect, render_pages
from ragged.ingest.report import IngestReport

BUFFER_PAGES = 64  # rendered pages held before embedding: twice the default largest batch


@dataclass
class _Pending:
    doc: Document
    pages: list[np.ndarray | None]  # fp16 (tokens, dim) once embedded
    failed: bool = False

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.pages)


@dataclass
class Progress:
    """Callbacks a front end may give: total pages known, then batches done."""

    start: Callable[[int], None] = lambda total: None
    advance: Callable[[int], None] = lambda pages: None


@dataclass
class IngestOptions:
    """Settings of one run."""

    index_dir: Path
    model: str
    device: DeviceHint = None
    batch_size: int | None = None
    dpi: int = 150
    cache_dir: Path | None = None


def ingest(paths: Sequence[str | Path], options: IngestOptions, progress: Progress | None = None) -> IngestReport:
    """Ingest ``paths`` into the index; never raises for one bad input."""
    progress = progress or Progress()
    started = time.perf_counter()
    report = IngestReport(index=str(options.index_dir), model=options.model)
    files, problems = discover(paths)
    report.problems.extend(problems)
    with IndexStore.open_for_writing(options.index_dir, options.model) as store:
        known = store.known_hashes()
        todo: list[Document] = []
        for path in files:
            try:
                doc = inspect(path)
            except InputError as exc:
                report.problems.append(InputProblem(str(path), str(exc)))
                continue
            if doc.sha256 in known:
                report.documents_skipped += 1
                continue
            known.add(doc.sha256)  # the same file twice in one run counts once
            todo.append(doc)
        if todo:
            progress.start(sum(d.pages for d in todo))
            embedder = ColPaliEmbedder(
                options.model, device=options.device, batch_size=options.batch_size, cache_dir=options.cache_dir
            )
            with embedder:
                _Stream(embedder, store, report, progress, options.dpi).run(todo)
    report.seconds = time.perf_counter() - started
    return report


class _Stream:
    """Renders, embeds and commits documents through a bounded page buffer."""

    def __init__(self, embedder: ColPaliEmbedder, store: IndexStore, report: IngestReport, progress: Progress,
                 dpi: int) -> None:
        self.embedder, self.store, self.report, self.progress, self.dpi = embedder, store, report, progress, dpi
        self.pending: list[_Pending] = []
        self.images: list[Image.Image] = []
        self.owners: list[tuple[_Pending, int]] = []

    def run(self, docs: list[Document]) -> None:
        for doc in docs:
            entry = _Pending(doc, [None] * doc.pages)
            self.pending.append(entry)
            try:
                for number, image in enumerate(render_pages(doc, self.dpi)):
                    self.images.append(image)
                    self.owners.append((entry, number))
                    if len(self.images) >= BUFFER_PAGES:
                        self._flush()
            except InputError as exc:
                self._fail(entry, str(exc))
        self._flush()

    def _fail(self, entry: _Pending, message: str) -> None:
        entry.failed = True
        self.report.problems.append(InputProblem(str(entry.doc.path), message))
        keep = [(img, owner) for img, owner in zip(self.images, self.owners, strict=True) if owner[0] is not entry]
        self.images = [img for img, _ in keep]
        self.owners = [owner for _, owner in keep]
        self.progress.advance(sum(p is None for p in entry.pages))  # count them as done

    def _flush(self) -> None:
        if self.images:
            images, owners = self.images, self.owners
            self.images, self.owners = [], []
            try:
                vectors = self.embedder.embed_images(images, on_batch=self.progress.advance)
            except OutOfMemoryRecoveryError as exc:
                for entry in {id(o[0]): o[0] for o in owners}.values():
                    if not entry.failed:
                        self._fail(entry, f"{entry.doc.path}: {exc}")
                vectors = []
            else:
                if self.embedder.last_report is not None:
                    self.report.absorb(self.embedder.last_report)
            for (entry, number), vec in zip(owners, vectors, strict=False):
                entry.pages[number] = vec.astype(np.float16)
        self._commit_ready()

    def _commit_ready(self) -> None:
        still: list[_Pending] = []
        for entry in self.pending:
            if entry.failed:
                continue
            if not entry.complete:
                still.append(entry)
                continue
            pages = [p for p in entry.pages if p is not None]
            self.store.add_document(entry.doc.sha256, str(entry.doc.path), pages)
            self.report.documents_added += 1
            self.report.pages_added += len(pages)
        self.pending = still
