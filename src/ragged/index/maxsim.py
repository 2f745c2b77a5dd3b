"""The one MaxSim kernel: exact late-interaction scores of pages for queries.

For a query of q tokens and a page of n vectors, MaxSim is the sum over the
query tokens of the best dot product with any page vector. All queries are
scored together: their tokens form one (tokens, dim) matrix, each block of
page vectors is multiplied by it once, maxima are taken per page, and a
one-hot matmul sums them per query. Index search, the server and
:meth:`ColPaliEmbedder.score` all score through here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


class QueryBlock:
    """Queries prepared once for scoring many blocks of pages on one device."""

    def __init__(self, queries: Sequence[np.ndarray], device: torch.device) -> None:
        if not queries:
            raise ValueError("No queries to score.")
        lengths = [int(np.asarray(q).shape[0]) for q in queries]
        q = torch.from_numpy(np.concatenate([np.asarray(x, dtype=np.float32) for x in queries]))  # (qt, dim)
        self.count = len(queries)
        self.tokens, self.dim = int(q.shape[0]), int(q.shape[1])
        self.device = device
        self.qt = q.t().contiguous().to(device)  # (dim, qt)
        owner = torch.repeat_interleave(torch.arange(len(queries)), torch.tensor(lengths))  # (qt,)
        self.to_query = torch.nn.functional.one_hot(owner, len(queries)).to(device, torch.float32)  # (qt, queries)

    def score(self, vectors: torch.Tensor, lengths: Sequence[int] | np.ndarray,
              sims: torch.Tensor | None = None) -> torch.Tensor:
        """MaxSim of consecutive pages of ``lengths`` vectors in ``vectors``
        ((n, dim) f32 on this device): shape (pages, queries).

        ``sims`` is an optional (>= n, tokens) buffer to reuse."""
        n = int(vectors.shape[0])
        out = sims[:n] if sims is not None else None
        similarities = torch.mm(vectors, self.qt, out=out)  # (n, qt)
        best = segment_max(similarities, lengths)  # (pages, qt)
        return best @ self.to_query  # (pages, queries)


def segment_max(sims: torch.Tensor, lengths: Sequence[int] | np.ndarray) -> torch.Tensor:
    """Row-wise maxima over consecutive segments of ``lengths`` rows: (segments, columns).

    Equal segments are a reshape. Unequal ones on the CPU use NumPy's
    ``maximum.reduceat``, which stays fast when another process competes
    for the cores (torch's ``scatter_reduce`` slowed 40x there, its
    threads waiting on each other); on accelerators, ``scatter_reduce``.
    """
    count = len(lengths)
    first = int(lengths[0])
    if all(int(n) == first for n in lengths):
        return sims.view(count, first, sims.shape[1]).amax(dim=1)  # (pages, columns)
    if sims.device.type == "cpu":
        starts = np.zeros(count, dtype=np.int64)
        np.cumsum(np.asarray(lengths[:-1], dtype=np.int64), out=starts[1:])
        return torch.from_numpy(np.maximum.reduceat(sims.numpy(), starts, axis=0))  # (pages, columns)
    index = torch.repeat_interleave(
        torch.arange(count, device=sims.device), torch.tensor(list(lengths), device=sims.device)
    )  # (n,)
    out = torch.empty((count, sims.shape[1]), dtype=sims.dtype, device=sims.device)
    return out.scatter_reduce_(0, index[:, None].expand_as(sims), sims, "amax", include_self=False)


def maxsim_scores(queries: Sequence[np.ndarray], pages: Sequence[np.ndarray],
                  chunk_vectors: int = 16_384) -> np.ndarray:
    """Exact MaxSim on the CPU: shape (queries, pages), float32.

    Pages are scored in blocks of about ``chunk_vectors`` vectors."""
    if not queries or not pages:
        return np.zeros((len(queries), len(pages)), dtype=np.float32)
    block = QueryBlock(queries, torch.device("cpu"))
    out = np.empty((len(pages), len(queries)), dtype=np.float32)
    start = 0
    while start < len(pages):
        end, total = start, 0
        while end < len(pages) and (end == start or total + len(pages[end]) <= chunk_vectors):
            total += len(pages[end])
            end += 1
        vectors = torch.from_numpy(np.concatenate([np.asarray(p, dtype=np.float32) for p in pages[start:end]]))
        out[start:end] = block.score(vectors, [len(p) for p in pages[start:end]]).numpy()  # (pages, queries)
        start = end
    return out.T.copy()
