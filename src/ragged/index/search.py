"""Exact MaxSim search over the index, chunk by chunk on the managed device.

For a query of q tokens and a page of n vectors, MaxSim is the sum over the
query tokens of the best dot product with any page vector. All queries are
scored together: their tokens form one (tokens, dim) matrix, each chunk of
page vectors is multiplied by it once, maxima are taken per page, and a
one-hot matmul sums them per query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ragged.gpu.batch_sizer import BatchSizeConfig, memory_budget
from ragged.gpu.device_manager import DeviceManager, default_device_manager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.types import DeviceInfo
from ragged.index.store import Catalog, IndexStore

CPU_CHUNK_VECTORS = 16_384  # 8 MiB of f32 vectors: stays in cache, measured fastest on the CPU
MAX_GPU_CHUNK_VECTORS = 4_000_000


@dataclass(frozen=True)
class SearchHit:
    """One result: a page and its MaxSim score."""

    path: str
    page: int
    score: float
    doc_hash: str


class MaxSimSearcher:
    """Scores every stored page against queries, exactly."""

    def __init__(self, store: IndexStore, device: DeviceInfo, device_manager: DeviceManager | None = None) -> None:
        self.store = store
        self.device = device
        self.manager = device_manager or default_device_manager()
        self.oom_handler = OOMHandler(
            self.manager, min_batch_size=1024,
            advice="Close other programs using the device, or search on another with --device.",
        )
        self.catalog: Catalog = store.catalog()

    def _chunk_vectors(self, dim: int, query_tokens: int) -> int:
        if not self.device.is_accelerator:
            return CPU_CHUNK_VECTORS
        info = self.manager.get_device_memory_info(self.device)
        budget = memory_budget(info, BatchSizeConfig())
        per_vector = dim * (2 + 4) + query_tokens * 4 * 2  # fp16 upload, f32 copy, sims and their max
        return int(max(CPU_CHUNK_VECTORS, min(MAX_GPU_CHUNK_VECTORS, budget // per_vector)))

    def score_all(self, queries: Sequence[np.ndarray]) -> np.ndarray:
        """MaxSim of every page for every query: shape (pages, queries).

        An OOM on the device is recovered by the OOM handler's plan: clear
        the cache, halve the chunk, then score on the CPU."""
        pages = self.catalog.pages
        if not pages or not queries:
            return np.zeros((len(pages), len(queries)), dtype=np.float32)
        dim = int(np.asarray(queries[0]).shape[1])
        chunk = self._chunk_vectors(dim, sum(len(q) for q in queries))
        return self.oom_handler.run(lambda device, size: self._score(queries, device, size), self.device, chunk)

    def _score(self, queries: Sequence[np.ndarray], device: DeviceInfo, chunk: int) -> np.ndarray:
        pages = self.catalog.pages
        dev = device.torch_device
        q = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.float32) for x in queries])).to(dev)  # (qt, dim)
        qt = q.t().contiguous()  # (dim, qt)
        owner = torch.repeat_interleave(torch.arange(len(queries)), torch.tensor([len(x) for x in queries]))
        to_query = torch.nn.functional.one_hot(owner, len(queries)).to(dev, torch.float32)  # (qt, queries)
        dim, tokens = q.shape[1], q.shape[0]
        buffer = torch.empty((chunk, dim), dtype=torch.float32, device=dev)  # reused: no page faults per chunk
        sims = torch.empty((chunk, tokens), dtype=torch.float32, device=dev)
        out = torch.empty((len(pages), len(queries)), dtype=torch.float32)
        page_index = 0
        for block, lengths in self._blocks(chunk):
            n = block.shape[0]
            buffer[:n].copy_(torch.from_numpy(block).to(dev, non_blocking=True))  # fp16 -> f32
            torch.mm(buffer[:n], qt, out=sims[:n])  # (n, qt)
            best = _segment_max(sims[:n], lengths)  # (pages in block, qt)
            scores = best @ to_query  # (pages in block, queries)
            out[page_index : page_index + len(lengths)] = scores.cpu()
            page_index += len(lengths)
        return out.numpy()

    def _blocks(self, chunk: int) -> Iterator[tuple[np.ndarray, list[int]]]:
        """Runs of whole pages of one document, at most ``chunk`` vectors each
        (a larger page is a block of its own). Blocks are views into the
        memory-mapped segment: nothing is copied before the f32 conversion."""
        by_doc: dict[str, list[int]] = {}
        for page in self.catalog.pages:
            by_doc.setdefault(page.doc_hash, []).append(page.n_vectors)
        for doc in self.catalog.documents:
            doc_lengths = by_doc[doc]
            vectors = self.store.segment(doc, sum(doc_lengths))  # (tokens, dim) fp16, memory-mapped
            start = end = 0
            lengths: list[int] = []
            for n in doc_lengths:
                if lengths and end - start + n > chunk:
                    yield vectors[start:end], lengths
                    start, lengths = end, []
                lengths.append(n)
                end += n
            if lengths:
                yield vectors[start:end], lengths

    def search(self, queries: Sequence[np.ndarray], k: int = 10) -> list[list[SearchHit]]:
        """The ``k`` best pages for each query, best first."""
        scores = self.score_all(queries)  # (pages, queries)
        hits: list[list[SearchHit]] = []
        for column in range(scores.shape[1]):
            col = scores[:, column]
            top = np.argsort(-col, kind="stable")[:k]
            hits.append([
                SearchHit(self.catalog.pages[i].path, self.catalog.pages[i].page, float(col[i]),
                          self.catalog.pages[i].doc_hash)
                for i in top
            ])
        return hits


def _segment_max(sims: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Row-wise maxima over consecutive segments of ``lengths`` rows."""
    if len(set(lengths)) == 1:  # equal pages (ColPali): a reshape is enough
        return sims.view(len(lengths), lengths[0], sims.shape[1]).amax(dim=1)  # (pages, qt)
    index = torch.repeat_interleave(
        torch.arange(len(lengths), device=sims.device), torch.tensor(lengths, device=sims.device)
    )  # (n,)
    out = torch.empty((len(lengths), sims.shape[1]), dtype=sims.dtype, device=sims.device)
    return out.scatter_reduce_(0, index[:, None].expand_as(sims), sims, "amax", include_self=False)
