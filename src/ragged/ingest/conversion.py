"""Converting the documents a run will embed, and keeping their PDFs.

The PDF LibreOffice makes of a document is kept in the index folder
(``.cache/converted/<content hash>.pdf``): ingest renders its pages from
it, the web page shows them from it, and it stays valid for as long as the
index holds that content (a moved file keeps its hash, so its PDF too).
The stored path is always the original file.

Conversions run on a small pool of LibreOffice processes, as many as the
memory policy's budget for the host allows at :data:`CONVERTER_BYTES`
each (and no more than the CPUs); each process may use its share of that
budget and is stopped past it, or when a file takes longer than the
per-file timeout.
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field, replace
from pathlib import Path

from loguru import logger

from ragged.errors import ConverterMissingError, InputError
from ragged.gpu.runtime import Runtime
from ragged.ingest.convert import Limits, find_soffice, import_filter, prepare_profile, run_batch
from ragged.ingest.documents import Document, DocumentKind, InputProblem, inspect

CONVERTER_BYTES = 1024**3  # memory set aside for each LibreOffice process when sizing the pool
MIN_CONVERTER_BYTES = 512 * 1024**2  # the least one process is allowed, whatever the budget says
MAX_CONVERTERS = 4
BATCH_FILES = 8  # files one LibreOffice process converts before the next starts
DEFAULT_TIMEOUT_S = 120.0
STALE_WORK_S = 3600.0  # a work folder this old belongs to no live conversion
_READ_ONLY: dict[str, Path] = {}  # PDFs made for the pages of an index this process cannot write to


def cache_folder(index_dir: Path) -> Path:
    """Where an index keeps the PDFs of its converted documents."""
    return index_dir / ".cache" / "converted"


def cached_pdf(index_dir: Path, doc_hash: str) -> Path:
    """The kept PDF of the document with this content hash (it may not exist)."""
    return cache_folder(index_dir) / f"{doc_hash}.pdf"


@dataclass(frozen=True)
class Pool:
    """How many LibreOffice processes run at once, and what each may take."""

    workers: int
    limits: Limits


def plan_pool(runtime: Runtime, timeout_s: float, batches: int) -> Pool:
    """The pool the runtime's memory policy allows on this host for ``batches`` batches of files."""
    manager = runtime.device_manager
    budget = runtime.policy.batch_budget(manager.try_memory_info(manager.cpu()))
    cpus = os.cpu_count() or 1
    if budget is None:  # the host could not be read: one process at the usual allowance
        return Pool(1, Limits(timeout_s, None))
    workers = max(1, min(cpus, MAX_CONVERTERS, budget // CONVERTER_BYTES, batches))
    return Pool(workers, Limits(timeout_s, max(MIN_CONVERTER_BYTES, budget // workers)))


@dataclass
class Conversion:
    """What converting a run's documents gave."""

    ready: list[Document] = field(default_factory=list)  # with their PDF and page count
    problems: list[InputProblem] = field(default_factory=list)
    skipped: list[InputProblem] = field(default_factory=list)  # not converted because LibreOffice is missing
    converted: int = 0  # converted in this run (the rest came from the kept PDFs)
    pages: int = 0
    seconds: float = 0.0
    peak_rss_bytes: int = 0  # of the largest LibreOffice process tree
    workers: int = 0


def convert_documents(docs: Sequence[Document], index_dir: Path, runtime: Runtime,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> Conversion:
    """Give every converted-kind document of ``docs`` its PDF (kept or made
    now) and page count; other documents pass through unchanged."""
    started = time.perf_counter()
    result = Conversion()
    todo: list[Document] = []
    for doc in docs:
        if doc.kind is not DocumentKind.CONVERTED:
            result.ready.append(doc)
        elif (kept := _with_pdf(doc, cached_pdf(index_dir, doc.sha256))) is not None:
            result.ready.append(kept)
        else:
            todo.append(doc)
    if todo:
        try:
            soffice = find_soffice()
        except ConverterMissingError as exc:
            names = ", ".join(d.path.name for d in todo[:3]) + (", ..." if len(todo) > 3 else "")
            result.problems.append(InputProblem(str(todo[0].path), f"{len(todo)} file(s) not converted ({names}): "
                                                                   f"{exc}"))
            result.skipped.extend(InputProblem(str(d.path), f"{d.path}: needs LibreOffice", skipped=True)
                                  for d in todo)
        else:
            batches = _batches(todo)
            _convert(soffice, batches, index_dir, plan_pool(runtime, timeout_s, len(batches)), result)
    order = {d.path: n for n, d in enumerate(docs)}
    result.ready.sort(key=lambda d: order[d.path])
    result.seconds = time.perf_counter() - started
    return result


def _with_pdf(doc: Document, pdf: Path) -> Document | None:
    """``doc`` read through ``pdf``, or None when that is missing or unreadable."""
    if not pdf.is_file():
        return None
    try:
        pages = inspect(pdf).pages
    except InputError as exc:
        logger.debug("kept PDF of {} unusable: {}", doc.path, exc)
        return None
    return replace(doc, pages=pages, source=pdf)


def _batches(docs: list[Document]) -> list[list[Document]]:
    """Groups of at most :data:`BATCH_FILES` with one import filter and
    names (stems) that differ, since LibreOffice names each PDF after its input."""
    batches: list[list[Document]] = []
    for doc in docs:
        stem, kind = doc.path.stem.lower(), import_filter(doc.path)
        home = next((b for b in batches if len(b) < BATCH_FILES and import_filter(b[0].path) == kind
                     and all(d.path.stem.lower() != stem for d in b)), None)
        if home is None:
            batches.append([doc])
        else:
            home.append(doc)
    return batches


def _convert(soffice: str, batches: list[list[Document]], index_dir: Path, pool: Pool, result: Conversion) -> None:
    folder = cache_folder(index_dir)
    folder.mkdir(parents=True, exist_ok=True)
    result.workers = pool.workers
    with _profiles(pool.workers) as profiles, ThreadPoolExecutor(pool.workers, "ragged-convert") as workers:
        def one(batch: list[Document]) -> tuple[list[tuple[Document, Path | str]], int]:
            profile = profiles.get()
            try:
                return _convert_batch(soffice, batch, profile, folder, pool.limits)
            finally:
                profiles.put(profile)

        for outcomes, peak in workers.map(one, batches):
            result.peak_rss_bytes = max(result.peak_rss_bytes, peak)
            for doc, made in outcomes:
                if isinstance(made, str):
                    result.problems.append(InputProblem(str(doc.path), made))
                    continue
                ready = _with_pdf(doc, made)
                if ready is None:
                    result.problems.append(InputProblem(str(doc.path), f"{doc.path}: LibreOffice made no usable "
                                                                       "PDF of it; export it to PDF yourself."))
                else:
                    result.ready.append(ready)
                    result.converted += 1
                    result.pages += ready.pages


def _convert_batch(soffice: str, batch: list[Document], profile: Path, folder: Path,
                   limits: Limits) -> tuple[list[tuple[Document, Path | str]], int]:
    """(each document of ``batch`` with its kept PDF or the one-line reason
    it has none, the peak memory of the LibreOffice processes)."""
    work = Path(tempfile.mkdtemp(prefix="run-", dir=folder))
    try:
        outcome = run_batch(soffice, [d.path for d in batch], profile, work, limits)
        peak = outcome.peak_rss_bytes
        done: list[tuple[Document, Path | str]] = []
        for doc in batch:
            pdf = outcome.pdfs.get(doc.path)
            if pdf is not None:
                target = folder / f"{doc.sha256}.pdf"
                os.replace(pdf, target)
                done.append((doc, target))
            elif outcome.stopped and len(batch) > 1:  # one of them stopped the run: each alone now
                alone, alone_peak = _convert_batch(soffice, [doc], profile, folder, limits)
                done.extend(alone)
                peak = max(peak, alone_peak)
            elif outcome.stopped:
                done.append((doc, f"{doc.path}: not converted: {outcome.stopped}; export it to PDF yourself."))
            else:
                done.append((doc, f"{doc.path}: LibreOffice could not open it (damaged, password-protected, or "
                                  f"not really a {doc.path.suffix} file); repair it or save an unlocked copy."))
        return done, peak
    except InputError as exc:
        return [(doc, str(exc)) for doc in batch], 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def _profiles(count: int) -> Iterator[queue.SimpleQueue[Path]]:
    """``count`` throwaway LibreOffice profiles (one per process at a time), removed afterwards."""
    root = Path(tempfile.mkdtemp(prefix="ragged-soffice-"))
    free: queue.SimpleQueue[Path] = queue.SimpleQueue()
    try:
        for n in range(count):
            free.put(prepare_profile(root / f"profile-{n}"))
        yield free
    finally:
        shutil.rmtree(root, ignore_errors=True)


def with_kept_pdf(doc: Document, index_dir: Path) -> Document:
    """``doc`` (as :func:`~ragged.ingest.documents.inspect` gives it) read
    through its kept PDF when it is a converted document."""
    if doc.kind is not DocumentKind.CONVERTED:
        return doc
    kept = _with_pdf(doc, cached_pdf(index_dir, doc.sha256))
    if kept is None:
        raise InputError(f"{doc.path}: its converted pages are not kept in the index; ingest it again.")
    return kept


def page_file(index_dir: Path, path: Path, doc_hash: str, timeout_s: float = DEFAULT_TIMEOUT_S,
              runtime: Runtime | None = None) -> Path:
    """The file whose pages a stored document shows: the file itself, or
    the PDF of a converted one (converted again, under ``runtime``'s memory
    policy or a private runtime's, if it was not kept)."""
    from ragged.ingest.convert import is_convertible

    if not is_convertible(path):
        return path
    for folder in (index_dir, _READ_ONLY.get(doc_hash)):
        if folder is not None and cached_pdf(folder, doc_hash).is_file():
            return cached_pdf(folder, doc_hash)
    target = index_dir if os.access(index_dir, os.W_OK) else Path(tempfile.mkdtemp(prefix="ragged-pages-"))
    with Runtime() if runtime is None else nullcontext(runtime) as active:
        result = convert_documents([inspect(path)], target, active, timeout_s)
    if result.problems:
        raise InputError(result.problems[0].message)
    if target != index_dir:
        _READ_ONLY[doc_hash] = target
    return result.ready[0].pdf


def sweep(index_dir: Path, keep: set[str]) -> int:
    """Remove kept PDFs of documents the index no longer holds, and work
    folders an interrupted run left (after an hour); how many PDFs went."""
    removed = 0
    folder = cache_folder(index_dir)
    if not folder.is_dir():
        return 0
    for pdf in folder.glob("*.pdf"):
        if pdf.stem not in keep:
            with suppress(OSError):
                pdf.unlink()
                removed += 1
    for work in folder.glob("run-*"):
        with suppress(OSError):
            if time.time() - work.stat().st_mtime > STALE_WORK_S:
                shutil.rmtree(work, ignore_errors=True)
    return removed
