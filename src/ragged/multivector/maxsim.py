"""The one MaxSim kernel: exact late-interaction scores of pages for queries.

For a query of q tokens and a page of n vectors, MaxSim is the sum over the
query tokens of the best dot product with any page vector. All queries are
scored together: their tokens form one (tokens, dim) matrix, each block of
page vectors is multiplied by it once, maxima are taken per page, and a
one-hot matmul sums them per query. Index search, the server and
:meth:`ColPaliEmbedder.score` all score through here.

Two layouts of a block, one kernel:

- on the CPU, vectors in columns, (dim, n): ``tokens @ block`` is a wide
  matrix product (45-55 GFLOP/s a core here, against 30-38 for the tall
  narrow product of the row layout), and the per-page maxima run along
  contiguous memory (NumPy's ``maximum.reduceat``, 8 times faster than
  across rows). A resident index keeps true columns; fp16 segments streamed
  from disk are converted to f32 rows and read through their transpose (BLAS
  takes it without a copy; a transposing copy cost twice the product);
- on an accelerator, vectors in rows, (n, dim), with torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

Lengths = Sequence[int] | np.ndarray


class QueryBlock:
    """Queries prepared once for scoring many blocks of pages on one device."""

    def __init__(self, queries: Sequence[np.ndarray], device: torch.device) -> None:
        if not queries:
            raise ValueError("No queries to score.")
        lengths = [int(np.asarray(q).shape[0]) for q in queries]
        tokens = np.concatenate([np.asarray(x, dtype=np.float32) for x in queries])  # (qt, dim)
        self.count = len(queries)
        self.tokens, self.dim = int(tokens.shape[0]), int(tokens.shape[1])
        self.device = device
        owner = np.repeat(np.arange(len(queries)), lengths)  # (qt,)
        one_hot = np.zeros((self.tokens, self.count), dtype=np.float32)  # (qt, queries)
        one_hot[np.arange(self.tokens), owner] = 1.0
        self.tokens_np = np.ascontiguousarray(tokens)  # (qt, dim)
        self.to_query_np = one_hot  # (qt, queries)
        self.qt = torch.from_numpy(tokens).t().contiguous().to(device)  # (dim, qt), for the row layout
        self.to_query = torch.from_numpy(one_hot).to(device)  # (qt, queries)

    def score_columns(self, block: np.ndarray, lengths: Lengths) -> np.ndarray:
        """MaxSim of consecutive pages of ``lengths`` vectors stored as the
        columns of ``block`` ((dim, n) float32, on the CPU): (pages, queries)."""
        sims = self.tokens_np @ block  # (qt, n)
        best = segment_max_columns(sims, lengths)  # (qt, pages)
        return np.ascontiguousarray((self.to_query_np.T @ best).T)  # (pages, queries)

    def score(self, vectors: torch.Tensor, lengths: Lengths, sims: torch.Tensor | None = None) -> torch.Tensor:
        """MaxSim of consecutive pages of ``lengths`` vectors in the rows of
        ``vectors`` ((n, dim) float32 on this device): (pages, queries).

        ``sims`` is an optional (>= n, tokens) buffer to reuse."""
        n = int(vectors.shape[0])
        out = sims[:n] if sims is not None else None
        similarities = torch.mm(vectors, self.qt, out=out)  # (n, qt)
        best = segment_max(similarities, lengths)  # (pages, qt)
        return best @ self.to_query  # (pages, queries)


def _starts(lengths: Lengths) -> np.ndarray:
    starts = np.zeros(len(lengths), dtype=np.int64)
    np.cumsum(np.asarray(lengths, dtype=np.int64)[:-1], out=starts[1:])
    return starts


def segment_max_columns(sims: np.ndarray, lengths: Lengths) -> np.ndarray:
    """Maxima over consecutive column segments of ``lengths`` columns: (rows, segments)."""
    first = int(lengths[0])
    if all(int(n) == first for n in lengths):  # equal pages (ColPali): a reshape
        return sims.reshape(sims.shape[0], len(lengths), first).max(axis=2)  # type: ignore[no-any-return]
    return np.maximum.reduceat(sims, _starts(lengths), axis=1)  # type: ignore[no-any-return]


def segment_max(sims: torch.Tensor, lengths: Lengths) -> torch.Tensor:
    """Row-wise maxima over consecutive segments of ``lengths`` rows: (segments, columns)."""
    count = len(lengths)
    first = int(lengths[0])
    if all(int(n) == first for n in lengths):  # equal pages (ColPali): a reshape
        return sims.view(count, first, sims.shape[1]).amax(dim=1)  # (pages, columns)
    index = torch.repeat_interleave(
        torch.arange(count, device=sims.device), torch.tensor(list(lengths), device=sims.device)
    )  # (n,)
    out = torch.empty((count, sims.shape[1]), dtype=sims.dtype, device=sims.device)
    return out.scatter_reduce_(0, index[:, None].expand_as(sims), sims, "amax", include_self=False)


def as_columns(vectors: np.ndarray) -> np.ndarray:
    """(n, dim) vectors of any float dtype as (dim, n) float32 columns: the
    transpose of contiguous f32 rows, a view. BLAS reads a transposed operand
    without copying it, so this costs only the conversion (torch converts
    fp16 fastest); copying into true columns would cost twice the product."""
    rows = torch.from_numpy(np.asarray(vectors)).to(torch.float32)  # (n, dim), contiguous
    return rows.numpy().T  # (dim, n) view


def maxsim_scores(queries: Sequence[np.ndarray], pages: Sequence[np.ndarray],
                  chunk_vectors: int = 65_536) -> np.ndarray:
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
        columns = as_columns(np.concatenate([np.asarray(p, dtype=np.float32) for p in pages[start:end]]))
        out[start:end] = block.score_columns(columns, [len(p) for p in pages[start:end]])  # (pages, queries)
        start = end
    return out.T.copy()
