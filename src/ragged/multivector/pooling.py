"""A page's vectors pooled into a few: the candidate stage's summary of a page.

Each page's vectors are clustered by a short spherical k-means (cosine
assignment, unit centroids) into :data:`POOLED` centroids. MaxSim of a
query against the centroids approximates its MaxSim against the page: a
query token that matches a group of the page's vectors matches their
centroid nearly as well. The candidate stage scores every page this way
(about 40 times less work than exact MaxSim for 700-vector pages) and
exact MaxSim then scores the best of them (:mod:`ragged.index.candidates`).

Deterministic: the same vectors always give the same centroids (initial
centroids are evenly spaced vectors of the page, a fixed number of
rounds), so an index rebuilt from its vectors gets the same stage. A page
with fewer vectors than centroids keeps its vectors, repeated to fill
(a repeated vector changes no maximum).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache

import numpy as np
from threadpoolctl import ThreadpoolController

POOLED = 16  # centroids a page: 8 KiB a page in f32 at width 128 (4 KiB on disk in fp16)
ROUNDS = 6  # k-means rounds: the assignment barely changes after 4-5 on 700-vector pages


def pool_page(vectors: np.ndarray, count: int = POOLED) -> np.ndarray:
    """``count`` unit centroids of one page's vectors ((n, dim), any float): (count, dim) float32."""
    v = np.asarray(vectors, dtype=np.float32)  # (n, dim)
    n = v.shape[0]
    if n == 0:
        raise ValueError("A page without vectors cannot be pooled.")
    if n <= count:
        return np.ascontiguousarray(v[np.arange(count) % n])  # (count, dim)
    centroids = v[np.linspace(0, n - 1, count).astype(np.int64)].copy()  # (count, dim)
    for _ in range(ROUNDS):
        owner = np.argmax(v @ centroids.T, axis=1)  # (n,)
        counts = np.bincount(owner, minlength=count)  # (count,)
        used = np.flatnonzero(counts)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))[used]
        sums = np.add.reduceat(v[np.argsort(owner, kind="stable")], starts, axis=0)  # (used, dim)
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids[used] = sums / np.maximum(norms, 1e-12)  # an unused centroid keeps its place
    return centroids


@cache
def _blas() -> ThreadpoolController:
    return ThreadpoolController()


def pool_pages(vectors: np.ndarray, lengths: Sequence[int] | np.ndarray, count: int = POOLED) -> np.ndarray:
    """The centroids of consecutive pages of ``lengths`` vectors in ``vectors``
    ((sum(lengths), dim)): (pages * count, dim) float32, page by page.

    BLAS runs on one thread meanwhile: its products here are small, and
    several threads on them were 20 times slower on a busy 2-core machine."""
    out = np.empty((len(lengths) * count, vectors.shape[1]), dtype=np.float32)  # (pages * count, dim)
    at = 0
    with _blas().limit(limits=1, user_api="blas"):
        for n, length in enumerate(lengths):
            out[n * count : (n + 1) * count] = pool_page(vectors[at : at + int(length)], count)
            at += int(length)
    return out
