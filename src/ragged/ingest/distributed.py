"""Ingest on every GPU of a machine and across machines, on Ray.

The driver (this process) lists the documents and skips those already
stored, exactly as a single-process ingest does. Pages are rendered in Ray
tasks on CPUs, no larger than the model will see them. Embedding runs in
Ray actors, one per device (:class:`~ragged.ingest.worker.EmbedWorker`):
each holds its own embedder with ragged's adaptive batching and OOM
recovery on its device. Work goes to whichever worker is free, so a fast
card does more. Results stream back to the driver, the single writer, which
commits each document whole (:class:`~ragged.ingest.commit.Committer`).

Why Ray core rather than Ray Data's ``map_batches``: the driver must know
which worker and device produced what, so that a worker that dies has its
pages embedded again elsewhere (and stored once), a device that keeps
failing is dropped while the run goes on, and a batch that fails on two
devices is blamed on its pages, not on the devices. Ray Data retries
blindly and hides placement.

Guarantees kept: a document is wholly present or absent whatever dies; a
rerun after a crash of the driver or of a worker resumes; every page is
stored exactly once.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from loguru import logger

from ragged.embeddings.cost import PageView
from ragged.errors import ConfigurationError, InputError
from ragged.gpu.device_manager import parse_device_hint
from ragged.gpu.registry import ray_resource
from ragged.gpu.types import DeviceType
from ragged.index.store import IndexStore
from ragged.ingest.cluster import connect, require_ray
from ragged.ingest.commit import Committer, Pending
from ragged.ingest.documents import Document, render_pages
from ragged.ingest.report import IngestReport, WorkerReport
from ragged.ingest.text_side import TextSide
from ragged.ingest.worker import EmbedWorker, PageJob, PageResult, WorkerConfig

BATCH_PAGES = 16  # pages sent to a worker at a time; it sub-batches them by its own memory
MAX_WORKER_FAILURES = 3  # a worker (its device) that fails this often is dropped
MAX_BATCH_ATTEMPTS = 2  # a batch that fails on this many workers is blamed on its pages
SLOTS = 2  # batches queued at each worker: the next is there when one ends, while the driver commits
WAIT_S = 30.0


@dataclass
class ScaleOptions:
    """How to spread the work: ``workers`` (None: one per GPU, one on a CPU-only
    cluster) on a local cluster or the one at ``address``."""

    workers: int | None = None
    address: str | None = None
    worker_cls: type = EmbedWorker  # what each actor runs (tests subclass it to inject faults)
    batch_pages: int = BATCH_PAGES
    events: Callable[[str, Any], None] | None = None  # ("workers", [(name, pid)]), ("batch", name), ...


@dataclass(eq=False)  # compared and hashed by identity: one per actor
class _Worker:
    name: str
    handle: Any
    failures: int = 0


@dataclass
class _Batch:
    jobs: list[PageJob]
    tried: list[str] = field(default_factory=list)  # workers it failed on


def render_document(doc: Document, dpi: int, view: PageView) -> tuple[Any, ...]:
    """A Ray task with ``doc.pages + 1`` return values: the one-line reason the
    pages cannot be had (None when they can), then each page. As the task's
    own returns, the pages are owned by the driver (whatever becomes of the
    process that rendered them), which passes their references on to a worker
    without ever fetching an image."""
    try:
        pages = list(render_pages(doc, dpi, fit=view.fit))
    except InputError as exc:
        return (str(exc), *([None] * doc.pages))
    if len(pages) != doc.pages:
        return (f"{doc.path}: {len(pages)} pages rendered, {doc.pages} expected; repair or re-export it.",
                *([None] * doc.pages))
    return (None, *pages)


def worker_device(hint: Any) -> str | None:
    """The device kind workers are asked for (None: auto). The index does not
    travel: Ray shows each worker only its own card, as ``cuda:0``."""
    chosen = parse_device_hint(hint)
    return chosen[0].value if chosen is not None else None


def worker_count(ray: Any, requested: int | None, kind: DeviceType | None = None) -> tuple[int, str | None]:
    """(workers, the Ray resource each claims one of): auto is one per
    accelerator of ``kind`` in the cluster (the resource its backend
    registered, e.g. ``GPU``; by default the first accelerator kind that has
    one), else one; a kind without a resource (the CPU) claims none."""
    resource = ray_resource(kind) if kind is not DeviceType.CPU else None
    available = int(ray.cluster_resources().get(resource, 0)) if resource else 0
    count = requested or max(1, available)
    if available and count > available:
        raise ConfigurationError(f"{count} workers asked for, but the cluster has {available} {resource}(s): use "
                                 f"--workers {available} or auto.")
    return count, resource if available else None


class Driver:
    """Runs one distributed ingest: rendering tasks, workers, commits."""

    def __init__(self, ray: Any, committer: Committer, report: IngestReport, advance: Any,
                 scale: ScaleOptions, dpi: int, view: PageView, cpus: int) -> None:
        self.ray, self.committer, self.report = ray, committer, report
        self.advance, self.scale, self.dpi, self.view = advance, scale, dpi, view
        # Render where the files are: on this node (other hosts of a cluster need not see them).
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
        self.render = ray.remote(num_cpus=1, max_retries=2, scheduling_strategy=here)(render_document)
        self.render_slots = max(1, cpus)
        self.queue: deque[_Batch | PageJob] = deque()
        self.renders: dict[Any, tuple[Pending, list[Any]]] = {}  # status ref -> document, its page refs
        self.flight: dict[Any, tuple[_Worker, _Batch]] = {}
        self.probes: dict[Any, _Worker] = {}  # workers Ray is restarting: back once their probe answers
        self.workers: list[_Worker] = []
        self.dropped: set[str] = set()

    def run(self, docs: list[Document], workers: list[_Worker]) -> list[_Worker]:
        """Embed and commit ``docs``; the workers still standing at the end."""
        self.workers = list(workers)
        todo = deque(docs)
        idle = deque(w for _ in range(SLOTS) for w in workers)  # interleaved: every worker gets work first
        limit = self.scale.batch_pages * len(workers) * 4  # pages waiting: bounded
        while todo or self.renders or self.queue or self.flight:
            while todo and len(self.renders) < self.render_slots and self._waiting() < limit:
                doc = todo.popleft()
                status, *pages = self.render.options(num_returns=doc.pages + 1).remote(doc, self.dpi, self.view)
                self.renders[status] = (self.committer.open(doc), pages)
            self._dispatch(idle, flush=not todo and not self.renders)
            if not idle and not self.flight and not self.probes and (self.queue or todo):
                raise ConfigurationError("Every worker failed and was dropped; see the warnings above.")
            refs = list(self.renders) + list(self.flight) + list(self.probes)
            if not refs:
                if self.queue and not todo:  # nothing will ever take it: say so rather than spin
                    raise ConfigurationError("No worker is left to take the remaining pages; see the warnings "
                                             "above. Everything committed so far is kept: run ingest again.")
                continue
            ready, _ = self.ray.wait(refs, num_returns=1, timeout=WAIT_S)
            for ref in ready:
                if ref in self.renders:
                    self._rendered(ref)
                elif ref in self.probes:
                    self._probed(ref, idle)
                else:
                    self._embedded(ref, idle)
        for ref, worker in list(self.probes.items()):  # still restarting at the end: wait for them, briefly
            with suppress(self.ray.exceptions.RayError):
                self.ray.get(ref, timeout=WAIT_S)
                idle.append(worker)
        return list(dict.fromkeys(idle))

    def _waiting(self) -> int:
        return sum(len(b.jobs) if isinstance(b, _Batch) else 1 for b in self.queue)

    def _dispatch(self, idle: deque[_Worker], flush: bool) -> None:
        while idle and self.queue:
            if isinstance(self.queue[0], _Batch):  # a batch coming back from a lost worker
                batch = self.queue.popleft()
                assert isinstance(batch, _Batch)
                worker = next((w for w in idle if w.name not in batch.tried), None)
                if worker is None:
                    if any(w.name not in batch.tried for w in self._standing()):
                        self.queue.appendleft(batch)  # an untried worker is busy or restarting: it will come
                        return
                    worker = idle[0]  # every worker left has tried it (one worker): once more on the same one
                idle.remove(worker)
                self._send(worker, batch)
                continue
            if self._waiting() < self.scale.batch_pages and not flush:
                return
            jobs: list[PageJob] = []
            while self.queue and isinstance(self.queue[0], PageJob) and len(jobs) < self.scale.batch_pages:
                job = self.queue.popleft()
                assert isinstance(job, PageJob)
                entry = self.committer.get(job.doc_hash)
                if entry is not None and not entry.failed:
                    jobs.append(job)
            if jobs:
                self._send(idle.popleft(), _Batch(jobs))

    def _send(self, worker: _Worker, batch: _Batch) -> None:
        self.flight[worker.handle.embed.remote(batch.jobs)] = (worker, batch)
        if self.scale.events is not None:
            self.scale.events("batch", worker.name)


    def _rendered(self, ref: Any) -> None:
        entry, pages = self.renders.pop(ref)
        try:
            error = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            error = f"{entry.doc.path}: rendering failed ({type(exc).__name__})."
        if error is not None:
            self.committer.fail(entry, error)
            return
        self.queue.extend(PageJob(entry.doc.sha256, n, page) for n, page in enumerate(pages))

    def _embedded(self, ref: Any, idle: deque[_Worker]) -> None:
        worker, batch = self.flight.pop(ref)
        try:
            results: list[PageResult] = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            self._lost(worker, batch, exc, idle)
            return
        worker.failures = 0
        idle.append(worker)
        for result in results:
            entry = self.committer.get(result.doc_hash)
            if entry is None or entry.failed or entry.pages[result.number] is not None:
                continue  # its document failed or was committed meanwhile, or this page came back twice
            entry.sent += 1
            self.advance(1)
            if result.page is None:
                self.committer.fail(entry, f"{entry.doc.path}: page {result.number + 1} could not be embedded: "
                                           f"{result.error}")
            else:
                self.committer.page(entry, result.number, result.page)
        self.committer.commit_ready()

    def _lost(self, worker: _Worker, batch: _Batch, exc: BaseException, idle: deque[_Worker]) -> None:
        """A worker died or its device failed during ``batch``: the pages go to
        another worker; the worker is dropped if it keeps failing."""
        batch.tried.append(worker.name)
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else type(exc).__name__
        logger.warning("Worker {} failed on a batch of {} page(s) ({}); the pages go to another worker",
                       worker.name, len(batch.jobs), reason)
        if len(batch.tried) >= MAX_BATCH_ATTEMPTS:  # failed twice (on two devices where there are two): the pages
            for job in batch.jobs:
                entry = self.committer.get(job.doc_hash)
                if entry is not None:
                    self.committer.fail(entry, f"{entry.doc.path}: page {job.number + 1} failed on "
                                               f"{len(batch.tried)} workers: {reason}")
        else:
            self.queue.appendleft(batch)
        if worker in self.probes.values():
            return  # its other batch, lost in the same failure: counted once
        worker.failures += 1
        while worker in idle:
            idle.remove(worker)
        if worker.failures >= MAX_WORKER_FAILURES:
            self._drop(worker, f"it failed {worker.failures} times in a row")
            return
        # Ray restarts a dead actor (max_restarts); it takes work again once it answers.
        self.probes[worker.handle.pid.options(max_task_retries=-1).remote()] = worker

    def _probed(self, ref: Any, idle: deque[_Worker]) -> None:
        worker = self.probes.pop(ref)
        try:
            self.ray.get(ref)
        except self.ray.exceptions.RayError:
            self._drop(worker, "it could not be restarted")
            return
        busy = sum(1 for w, _ in self.flight.values() if w is worker) + idle.count(worker)
        idle.extend([worker] * max(0, SLOTS - busy))  # its free slots, no more

    def _standing(self) -> list[_Worker]:
        """Workers not dropped (idle, busy or restarting)."""
        return [w for w in self.workers if w.name not in self.dropped]

    def _drop(self, worker: _Worker, why: str) -> None:
        self.dropped.add(worker.name)
        self.report.notes.append(f"worker {worker.name} was dropped ({why}); the run went on without it")
        logger.warning("Dropping worker {}: {}", worker.name, why)
        with suppress(Exception):
            self.ray.kill(worker.handle, no_restart=True)


def run_distributed(store: IndexStore, docs: list[Document], replaces: set[str], options: Any,
                    text: TextSide, report: IngestReport, advance: Any) -> None:
    """Embed ``docs`` on Ray workers (with the run's text model, if ``text``
    has one) and commit them through ``store``."""
    scale: ScaleOptions = options.scale
    ray = require_ray()
    started = connect(ray, scale.address)
    handles: list[Any] = []
    try:
        kind = worker_device(options.device)
        count, resource = worker_count(ray, scale.workers, DeviceType(kind) if kind else None)
        cpus = int(ray.cluster_resources().get("CPU", os.cpu_count() or 1))
        local_cpus = _node_cpus(ray) or cpus  # render slots: renders run on this node
        text_model = None
        if text.embedder is not None:  # the workers load their own copies; the index records it now
            text.record_model(store)
            text_model = text.embedder.name
        config = WorkerConfig(options.model, text_model, options.cache_dir, options.policy, options.batch_size,
                              threads=None if resource else max(1, cpus // count), device=kind)
        claim: dict[str, Any] = {"num_cpus": 0, "max_restarts": MAX_WORKER_FAILURES}
        if resource == "GPU":
            claim["num_gpus"] = 1
        elif resource:
            claim["resources"] = {resource: 1}
        actor = ray.remote(**claim)(scale.worker_cls)
        workers = []
        for n in range(count):
            handle = actor.remote(config, f"w{n}")
            handles.append(handle)
            workers.append(_Worker(f"w{n}", handle))
        pids = ray.get([w.handle.pid.remote() for w in workers])
        if scale.events is not None:
            scale.events("workers", [(w.name, pid) for w, pid in zip(workers, pids, strict=True)])
        committer = Committer(store, report, advance, replaces, TextSide(None))
        view = _page_view(options)
        began = time.perf_counter()
        standing = Driver(ray, committer, report, advance, scale, options.dpi, view,
                          local_cpus).run(docs, workers)
        for worker in standing:
            try:
                part = ray.get(worker.handle.finish.remote(), timeout=WAIT_S)
            except ray.exceptions.RayError:  # lost at the very end: its pages are stored, its figures are not
                report.notes.append(f"worker {worker.name}'s figures were lost with it")
                continue
            report.absorb_worker(part)
        report.embed_seconds = time.perf_counter() - began  # wall time over every worker: the overall speed
        devices = [p.device for p in report.workers]
        report.device = f"{len(devices)} worker(s) on " + ", ".join(f"{devices.count(d)} x {d}"
                                                                     for d in sorted(set(devices)))
    finally:
        for handle in handles:
            with suppress(Exception):  # already gone
                ray.kill(handle, no_restart=True)
        if started:
            ray.shutdown()


def _node_cpus(ray: Any) -> int | None:
    """CPUs of the node this driver runs on, as Ray counts them."""
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here and node.get("Alive"):
            return int(node.get("Resources", {}).get("CPU", 0)) or None
    return None


def _page_view(options: Any) -> PageView:
    from ragged.embeddings.loading import load_processor, resolve_model

    cache = options.cache_dir or _default_cache()
    return PageView.of(load_processor(resolve_model(options.model, cache), cache))


def _default_cache() -> Any:
    from ragged.paths import cache_dir

    return cache_dir()


__all__ = ["ScaleOptions", "WorkerReport", "require_ray", "run_distributed"]
