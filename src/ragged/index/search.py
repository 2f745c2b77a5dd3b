"""MaxSim search over the index: every page exactly, or candidates first.

Page vectors come from a source: the memory-mapped fp16 segments (a
one-off search reads them straight from disk) or a resident copy held by a
long-lived process in the form that searches fastest (see
:mod:`ragged.index.resident`). Either gives blocks of whole pages (of the
pages' vectors, or of their pooled vectors: the candidate stage), which
the one MaxSim kernel (:mod:`ragged.multivector.maxsim`) scores.
:meth:`MaxSimSearcher.score_all` scores every page exactly;
:meth:`MaxSimSearcher.score_candidates` scores the candidate stage, then
exactly the pages it finds (:mod:`ragged.index.candidates`).

On the CPU, blocks are scored in the column layout (see
:mod:`ragged.multivector.maxsim`) by a small pool of workers, one BLAS and one
torch thread each: no worker ever waits on another at a barrier, so when
another process takes a core the search slows down in proportion instead
of collapsing (torch's own threads, waiting on a descheduled sibling, made
a query 15 times slower). On an accelerator the chunk size comes from the
memory policy's budget like any batch, and an OOM goes through the one
recovery engine, which shrinks the chunk and remembers the size that failed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from ragged.gpu.runtime import Runtime
from ragged.gpu.types import DeviceInfo
from ragged.index.catalog import Catalog
from ragged.index.results import SearchHit
from ragged.index.store import IndexStore
from ragged.multivector.maxsim import QueryBlock, as_columns

CPU_CHUNK_VECTORS = 32_768  # 16 MiB of f32 vectors a block: measured fastest with two workers here
MAX_GPU_CHUNK_VECTORS = 4_000_000
MIN_CHUNK_VECTORS = 1_024
SEARCH_WORK = "search"
SEARCH_ADVICE = "Close other programs using the device, or search on another with --device."

__all__ = ["Block", "MaxSimSearcher", "SearchHit", "SegmentSource", "StagedSource", "VectorSource", "chunk_vectors",
           "top_k"]
_TORCH_THREADS = threading.Lock()


@dataclass(frozen=True)
class Block:
    """Whole pages: catalog positions from ``first`` (or, where ``positions``
    is given, those positions), their vector counts, and their vectors: rows
    ((n, dim), fp16 or f32, NumPy or a device tensor) or, with ``columns``,
    (dim, n) float32 on the CPU."""

    first: int
    lengths: np.ndarray  # (pages,) int64
    vectors: np.ndarray | torch.Tensor  # (sum(lengths), dim), or (dim, sum(lengths)) with columns
    columns: bool = False
    positions: np.ndarray | None = None  # (pages,) int64: pages not consecutive in the catalog

    def rows(self) -> slice | np.ndarray:
        """Where the block's pages are in the catalog (an index of a (pages, ...) array)."""
        return self.positions if self.positions is not None else slice(self.first, self.first + len(self.lengths))


class VectorSource(Protocol):
    """Where a searcher reads page vectors from."""

    @property
    def catalog(self) -> Catalog: ...

    def blocks(self, max_vectors: int) -> Iterator[Block]: ...


class StagedSource(VectorSource, Protocol):
    """A source that also gives the candidate stage and chosen pages."""

    def pooled_blocks(self, max_vectors: int) -> Iterator[Block]:
        """The pooled vectors of the pages that have them, in blocks (catalog order)."""
        ...

    def page_blocks(self, positions: np.ndarray, max_vectors: int) -> Iterator[Block]:
        """The vectors of the pages at ``positions`` (sorted), in blocks that give their positions."""
        ...


class SegmentSource:
    """Page vectors read from the memory-mapped fp16 segments, document by document."""

    def __init__(self, store: IndexStore, catalog: Catalog | None = None) -> None:
        self.store = store
        self._catalog = catalog if catalog is not None else store.catalog()

    @property
    def catalog(self) -> Catalog:
        return self._catalog

    def blocks(self, max_vectors: int) -> Iterator[Block]:
        """Runs of whole pages stored together, at most ``max_vectors`` each (a
        larger page is a block of its own). Views into the memory-mapped
        segment files: nothing is copied before the f32 conversion."""
        for first, lengths, vectors in self.store.runs(self._catalog):  # vectors: (tokens, dim) fp16
            yield from split_blocks(first, lengths, vectors, max_vectors)

    def pooled_blocks(self, max_vectors: int) -> Iterator[Block]:
        """The candidate stage, read from the segment files: each document's
        pooled block is small (16 vectors a page), so consecutive ones are
        joined into blocks of about ``max_vectors`` (one block a document
        cost more in scheduling than in arithmetic at 100,000 pages)."""
        def runs() -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
            for first, pages, vectors in self.store.pooled_runs(self._catalog):  # (pages * pooled, dim) fp16
                yield (np.arange(first, first + pages, dtype=np.int64),
                       np.full(pages, vectors.shape[0] // pages, dtype=np.int64), vectors)

        yield from gathered(runs(), max_vectors)

    def page_blocks(self, positions: np.ndarray, max_vectors: int) -> Iterator[Block]:
        """The pages at ``positions``, copied out of the maps into blocks of at most ``max_vectors``."""
        yield from gathered(self.store.gather(self._catalog, positions), max_vectors)


def gathered(parts: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]], max_vectors: int) -> Iterator[Block]:
    """Pieces of (positions, vector counts, rows) joined into blocks of at most
    ``max_vectors`` (a piece larger than that cut at page boundaries first; a
    single page larger than that is a block of its own)."""
    held: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    size = 0
    for part in parts:
        for piece in _cut(part, max_vectors):
            rows = int(piece[2].shape[0])
            if held and size + rows > max_vectors:
                yield _joined(held)
                held, size = [], 0
            held.append(piece)
            size += rows
    if held:
        yield _joined(held)


def _cut(part: tuple[np.ndarray, np.ndarray, np.ndarray],
         max_vectors: int) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``part`` in pieces of at most ``max_vectors`` rows, whole pages each."""
    positions, lengths, rows = part
    if int(rows.shape[0]) <= max_vectors or len(lengths) <= 1:
        yield part
        return
    for block in split_blocks(int(positions[0]), lengths, rows, max_vectors, positions=positions):
        assert block.positions is not None
        yield block.positions, block.lengths, block.vectors  # type: ignore[misc]  # device rows stay tensors


def _joined(held: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> Block:
    positions = np.concatenate([p for p, _, _ in held])
    lengths = np.concatenate([n for _, n, _ in held])
    parts = [v for _, _, v in held]
    if len(parts) == 1:
        vectors = parts[0]
    elif isinstance(parts[0], torch.Tensor):  # rows held on a device
        vectors = torch.cat(parts)  # type: ignore[arg-type]
    else:
        vectors = np.concatenate(parts)  # (sum(lengths), dim)
    return Block(int(positions[0]), lengths, vectors, positions=positions)


def split_blocks(first: int, lengths: np.ndarray, vectors: np.ndarray | torch.Tensor,
                 max_vectors: int, columns: bool = False, positions: np.ndarray | None = None) -> Iterator[Block]:
    """``vectors`` of consecutive pages (rows, or columns) cut into blocks of at
    most ``max_vectors`` (whole pages); ``positions``, where given, are the
    pages' catalog positions (pages not consecutive in the catalog)."""
    ends = np.cumsum(lengths)
    start_page, start_row = 0, 0
    while start_page < len(lengths):
        limit = start_row + max_vectors
        stop = int(np.searchsorted(ends, limit, side="right"))
        stop = max(stop, start_page + 1)
        end_row = int(ends[stop - 1])
        part = vectors[:, start_row:end_row] if columns else vectors[start_row:end_row]
        at = positions[start_page:stop] if positions is not None else None
        yield Block(first + start_page if at is None else int(at[0]), lengths[start_page:stop], part, columns, at)
        start_page, start_row = stop, end_row


def chunk_vectors(budget_bytes: int | None, dim: int, query_tokens: int) -> int:
    """Vectors per chunk that fit ``budget_bytes`` on an accelerator.

    Per vector: its fp16 upload and f32 copy, and one f32 similarity per
    query token plus the same again for the maxima."""
    if budget_bytes is None:
        return CPU_CHUNK_VECTORS
    per_vector = dim * (2 + 4) + query_tokens * 4 * 2
    return int(max(MIN_CHUNK_VECTORS, min(MAX_GPU_CHUNK_VECTORS, budget_bytes // per_vector)))


@contextmanager
def single_threaded_kernels() -> Iterator[None]:
    """One BLAS and one torch thread per worker while the CPU pool scores
    (one search at a time: the settings are process-wide)."""
    with _TORCH_THREADS, threadpool_limits(limits=1, user_api="blas"):
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(before)


class MaxSimSearcher:
    """Scores every stored page against queries, exactly, on ``device`` under
    ``runtime`` (its memory policy sizes device chunks, its OOM engine
    recovers them)."""

    def __init__(self, store: IndexStore | VectorSource, device: DeviceInfo, runtime: Runtime, *,
                 workers: int | None = None) -> None:
        self.source: VectorSource = SegmentSource(store) if isinstance(store, IndexStore) else store
        self.device = device
        self.runtime = runtime
        self.manager = runtime.device_manager
        self.policy = runtime.policy
        self.oom_handler = runtime.oom_handler
        self.workers = workers or max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                             else os.cpu_count() or 1))

    @property
    def catalog(self) -> Catalog:
        """The pages being searched."""
        return self.source.catalog

    def _chunk_vectors(self, dim: int, query_tokens: int) -> int:
        if not self.device.is_accelerator:
            return CPU_CHUNK_VECTORS
        budget = self.policy.batch_budget(self.manager.try_memory_info(self.device))
        return chunk_vectors(budget, dim, query_tokens)

    def score_all(self, queries: Sequence[np.ndarray]) -> np.ndarray:
        """MaxSim of every page for every query, exactly: shape (pages, queries).

        An OOM on the device is recovered by the one engine: smaller chunks,
        then the CPU; the size that failed is not tried again."""
        pages = self.catalog.pages
        out = np.full((len(pages), len(queries)), -np.inf, dtype=np.float32)
        if pages and queries:
            self.score_into(queries, self.source.blocks, out)
        return out

    def score_candidates(self, queries: Sequence[np.ndarray], depth: int) -> np.ndarray:
        """MaxSim, exactly, of the pages the candidate stage finds for each
        query's ``depth`` best (every page where the source has no stage):
        shape (pages, queries), -inf for pages not scored."""
        from ragged.index.candidates import candidate_scores

        if not hasattr(self.source, "pooled_blocks") or not self.catalog.pages or not queries:
            return self.score_all(queries)
        return candidate_scores(self, self.source, queries, depth)  # type: ignore[arg-type]

    def score_into(self, queries: Sequence[np.ndarray], blocks: Callable[[int], Iterable[Block]],
                   out: np.ndarray) -> None:
        """MaxSim of the pages ``blocks(max_vectors)`` gives, written to their rows of ``out`` (pages, queries)."""
        dim = int(np.asarray(queries[0]).shape[1])
        chunk = self._chunk_vectors(dim, sum(len(q) for q in queries))
        self.oom_handler.run(lambda device, size: self._score(queries, device, size, blocks, out), self.device,
                             chunk, work=SEARCH_WORK, min_batch_size=MIN_CHUNK_VECTORS, advice=SEARCH_ADVICE)

    def _score(self, queries: Sequence[np.ndarray], device: DeviceInfo, chunk: int,
               blocks: Callable[[int], Iterable[Block]], out: np.ndarray) -> None:
        if device.is_accelerator:
            self._score_on_device(queries, device, chunk, blocks, out)
        else:
            self._score_on_cpu(queries, chunk, blocks, out)

    def _score_on_cpu(self, queries: Sequence[np.ndarray], chunk: int, blocks: Callable[[int], Iterable[Block]],
                      out: np.ndarray) -> None:
        block = QueryBlock(queries, torch.device("cpu"))

        def score(part: Block) -> None:
            vectors = part.vectors
            if isinstance(vectors, torch.Tensor):
                vectors = vectors.cpu().numpy()
            columns = vectors if part.columns else as_columns(vectors)  # (dim, n) f32, a view of rows
            out[part.rows()] = block.score_columns(columns, part.lengths)

        with single_threaded_kernels(), ThreadPoolExecutor(self.workers, "ragged-maxsim") as pool:
            for future in [pool.submit(score, part) for part in blocks(chunk)]:
                future.result()

    def _score_on_device(self, queries: Sequence[np.ndarray], device: DeviceInfo, chunk: int,
                         blocks: Callable[[int], Iterable[Block]], out: np.ndarray) -> None:
        dev = device.torch_device
        block = QueryBlock(queries, dev)
        longest = int(self.catalog.lengths.max()) if len(self.catalog.pages) else 0
        rows = max(chunk, longest)  # a page longer than a chunk is one block
        buffer = torch.empty((rows, block.dim), dtype=torch.float32, device=dev)  # reused across chunks
        sims = torch.empty((rows, block.tokens), dtype=torch.float32, device=dev)
        for part in blocks(chunk):
            n = int(part.lengths.sum())
            if n > rows:  # a block of another kind (pooled) larger than the buffers: grow them
                rows = n
                buffer = torch.empty((rows, block.dim), dtype=torch.float32, device=dev)
                sims = torch.empty((rows, block.tokens), dtype=torch.float32, device=dev)
            source = part.vectors if isinstance(part.vectors, torch.Tensor) else torch.from_numpy(part.vectors)
            buffer[:n].copy_(source.to(dev, non_blocking=True))  # to f32 on the device
            scores = block.score(buffer[:n], part.lengths, sims)  # (pages in block, queries)
            out[part.rows()] = scores.cpu().numpy()

    def search(self, queries: Sequence[np.ndarray], k: int = 10, exact: bool = True) -> list[list[SearchHit]]:
        """The ``k`` best pages for each query by MaxSim, best first: every
        page scored, or (``exact`` false) the candidate stage's pages."""
        catalog = self.catalog
        scores = self.score_all(queries) if exact else self.score_candidates(queries, k)  # (pages, queries)
        out = []
        for j in range(scores.shape[1]):
            order = top_k(scores[:, j], k)
            order = order[np.isfinite(scores[order, j])]  # pages the candidate stage left out are not hits
            out.append([SearchHit(catalog.pages[p].path, catalog.pages[p].page, float(scores[p, j]),
                                  catalog.pages[p].doc_hash, {"vision": n}) for n, p in enumerate(order.tolist(), 1)])
        return out


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` largest scores, best first (ties by position)."""
    if k >= len(scores):
        return np.argsort(-scores, kind="stable")
    part = np.argpartition(-scores, k - 1)[:k]
    return part[np.lexsort((part, -scores[part]))]
