"""Ingest: files in, pages embedded with resource management, index out.

Pages are rendered no larger than the model will see them and embedded in
a stream through a buffer bounded in pages and in bytes (from the memory
policy's budget for the host), so small documents share batches and a
poster-sized PDF never fills the RAM. Each document is committed whole once
all its pages are embedded; a page that cannot be embedded even on the CPU
fails its document alone. Inputs that fail are reported and skipped; the
rest go on.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ragged.embeddings.colpali_embedder import ColPaliEmbedder, PageVectors
from ragged.errors import InputError
from ragged.gpu.batch_runner import ItemFailure
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.model_manager import ModelEvent
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.runtime import Runtime
from ragged.index.catalog import DocumentRecord
from ragged.index.store import IndexStore, StoredPage, absolute
from ragged.ingest import commit as commit_module
from ragged.ingest.changes import missing_under, plan_changes
from ragged.ingest.commit import Committer, Pending
from ragged.ingest.conversion import DEFAULT_TIMEOUT_S, convert_documents, sweep
from ragged.ingest.distributed import ScaleOptions
from ragged.ingest.documents import Document, DocumentKind, InputProblem, RenderedPage, discover, render_pages
from ragged.ingest.report import IngestReport
from ragged.ingest.text_side import TextSide, awaiting_text
from ragged.text.model import DEFAULT_TEXT_MODEL, NO_TEXT_MODEL

BUFFER_PAGES = 64  # rendered pages held before embedding: twice the default largest batch
MIN_BUFFER_BYTES = 32 * 1024**2
MAX_BUFFER_BYTES = 1024**3
BUFFER_SHARE = 0.25  # of the host's batch budget under the memory policy


@dataclass
class Progress:
    """Callbacks a front end may give: total pages known, then pages done
    (each page is counted once, embedded or given up on)."""

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
    prune: bool = False
    policy: MemoryPolicy = field(default_factory=MemoryPolicy)
    text_model: str | None = DEFAULT_TEXT_MODEL  # None or "none": images only
    text_model_explicit: bool = False  # named by the user: it must load
    scale: ScaleOptions | None = None  # embed on Ray workers (--workers) instead of in this process
    convert_timeout_s: float = DEFAULT_TIMEOUT_S  # per Office, web or text file converted by LibreOffice


def ingest(paths: Sequence[str | Path], options: IngestOptions, progress: Progress | None = None,
           runtime: Runtime | None = None) -> IngestReport:
    """Ingest ``paths`` into the index; never raises for one bad input.

    ``runtime`` is the program's resource manager (one is built from
    ``options.policy`` when not given, and closed at the end)."""
    if runtime is None:
        with Runtime(policy=options.policy) as own:
            return ingest(paths, options, progress, own)
    progress = progress or Progress()
    started = time.perf_counter()
    report = IngestReport(index=str(options.index_dir), model=options.model)
    files, problems = discover(paths)
    with IndexStore.open_for_writing(options.index_dir, options.model) as store:
        stored = store.documents()
        plan = plan_changes(files, stored)
        report.problems.extend(p for p in problems if not p.skipped)
        report.skipped.extend(p for p in problems if p.skipped)
        report.problems.extend(plan.problems)
        report.documents_skipped = plan.unchanged
        report.duplicates = len(plan.duplicates)
        report.notes.extend(f"{new}: same content as {old}, not stored twice" for new, old in plan.duplicates)
        for move in plan.moves:
            store.move_document(move.doc_hash, move.new_path)
            report.documents_moved += 1
            report.notes.append(f"{move.old_path} moved to {move.new_path}")
        if plan.outdated:
            report.documents_removed += len(plan.outdated)
            store.remove_documents(plan.outdated)
        if options.prune:
            gone = missing_under(store.documents(), [Path(p) for p in paths])
            store.remove_documents([d.doc_hash for d in gone])
            report.documents_removed += len(gone)
            report.notes.extend(f"{d.path}: file gone, removed from the index" for d in gone)
            report.problems = [p for p in report.problems if not _pruned(p, gone)]
        if any(d.kind is DocumentKind.CONVERTED for d in plan.embed):
            converted = convert_documents(plan.embed, options.index_dir, runtime, options.convert_timeout_s)
            plan.embed = converted.ready
            report.absorb_conversion(converted)
        wants_text = options.text_model not in (None, NO_TEXT_MODEL)
        older = awaiting_text(store, store.documents()) if wants_text else []
        if plan.embed or older:
            _embed(store, plan.embed, plan.replaces, older, options, report, progress, runtime)
        elif store.needs_text_index() or store.needs_stage():  # an interrupted first run, an older index
            store.finish()
        sweep(options.index_dir, store.known_hashes())
    report.seconds = time.perf_counter() - started
    return report


def _embed(store: IndexStore, docs: list[Document], replaces: set[str], older: list[DocumentRecord],
           options: IngestOptions, report: IngestReport, progress: Progress, runtime: Runtime) -> None:
    """Embed ``docs`` (images and text) and give older documents their text side,
    both models under the run's one runtime."""
    evicted_before = runtime.model_manager.counts[ModelEvent.EVICT]
    text = TextSide.start(options.text_model, device=options.device, cache_dir=options.cache_dir,
                          runtime=runtime, explicit=options.text_model_explicit)
    if text.embedder is not None:
        report.text_model = text.embedder.name
    elif text.reason:
        report.notes.append(text.reason)
    try:
        report.documents_text_added += text.upgrade(store, older, report.text)
        if docs and options.scale is not None:
            from ragged.ingest.distributed import run_distributed

            progress.start(sum(d.pages for d in docs))
            run_distributed(store, docs, replaces, options, text, report, progress.advance)
        elif docs:
            progress.start(sum(d.pages for d in docs))
            with ColPaliEmbedder(options.model, device=options.device, batch_size=options.batch_size,
                                 cache_dir=options.cache_dir, runtime=runtime) as embedder:
                _Stream(embedder, store, report, progress, options.dpi, replaces, text).run(docs)
        if text.on or report.text_model or store.needs_stage():
            store.finish()
    finally:
        text.close()
    if options.scale is None:
        report.embed_seconds = report.vision.seconds + report.text.seconds
    evicted = runtime.model_manager.counts[ModelEvent.EVICT] - evicted_before
    if evicted:
        report.notes.append(f"the device could not hold both models at once: a model was unloaded {evicted} "
                            "time(s) to make room for the other (slower, nothing lost)")


def _pruned(problem: InputProblem, gone: list[DocumentRecord]) -> bool:
    """A missing input whose stored documents pruning removed: not a problem."""
    target = Path(absolute(problem.path))
    return (problem.empty or not target.exists()) and any(Path(d.path).is_relative_to(target) for d in gone)


def host_buffer_bytes(embedder: ColPaliEmbedder) -> int:
    """Bytes of rendered pages to hold before embedding: a share of the
    host's budget under the memory policy."""
    manager = embedder.device_manager
    budget = embedder.runtime.policy.batch_budget(manager.try_memory_info(manager.cpu()))
    if budget is None:
        return 8 * MIN_BUFFER_BYTES
    return int(min(MAX_BUFFER_BYTES, max(MIN_BUFFER_BYTES, budget * BUFFER_SHARE)))


@dataclass
class _Held:
    entry: Pending
    number: int
    page: RenderedPage


class _Stream:
    """Renders, embeds and commits documents through a bounded page buffer."""

    def __init__(self, embedder: ColPaliEmbedder, store: IndexStore, report: IngestReport, progress: Progress,
                 dpi: int, replaces: set[str], text: TextSide) -> None:
        self.embedder, self.store, self.report, self.progress, self.dpi = embedder, store, report, progress, dpi
        self.max_bytes = host_buffer_bytes(embedder)
        # A long document's pages are written in pieces no larger than the page buffer (the policy's share).
        self.committer = Committer(store, report, progress.advance, replaces, text,
                                   piece_bytes=min(commit_module.PIECE_BYTES, self.max_bytes))
        self.held: list[_Held] = []
        self.held_bytes = 0

    def run(self, docs: list[Document]) -> None:
        for doc in docs:
            entry = self.committer.open(doc)
            rendered = 0
            try:
                for number, page in enumerate(render_pages(doc, self.dpi, fit=self.embedder.page_view_size)):
                    if entry.failed:  # a page of it failed in an earlier flush
                        break
                    if number >= doc.pages:
                        raise InputError(f"{doc.path}: more pages than it said; repair or re-export it.")
                    rendered = number + 1
                    self.held.append(_Held(entry, number, page))
                    self.held_bytes += page.nbytes
                    if len(self.held) >= BUFFER_PAGES or self.held_bytes >= self.max_bytes:
                        self._flush()
                if rendered < doc.pages and not entry.failed:  # the file changed, or lied about its pages
                    raise InputError(f"{doc.path}: {rendered} pages rendered, {doc.pages} expected; "
                                     "repair or re-export it, then ingest again.")
            except InputError as exc:
                self._fail(entry, str(exc))
        self._flush()

    def _fail(self, entry: Pending, message: str) -> None:
        self.held = [h for h in self.held if h.entry is not entry]
        self.held_bytes = sum(h.page.nbytes for h in self.held)
        self.committer.fail(entry, message)

    def _flush(self) -> None:
        if self.held:
            held, self.held, self.held_bytes = self.held, [], 0
            for h in held:
                h.entry.sent += 1
            run = self.embedder.embed_pages([h.page.image for h in held], on_batch=self.progress.advance)
            self.report.absorb(run.report)
            for h, result in zip(held, run.results, strict=True):
                if isinstance(result, ItemFailure):
                    self._fail(h.entry, f"{h.entry.doc.path}: page {h.number + 1} could not be embedded: "
                                        f"{result.reason}")
                elif isinstance(result, PageVectors):
                    self.committer.page(h.entry, h.number, StoredPage(result.vectors.astype(np.float16),
                                                                      result.grid, h.page.text))
        self.committer.commit_ready()
