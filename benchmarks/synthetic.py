"""Synthetic indexes and documents for the benchmarks.

Two kinds of synthetic pages, each of 600-800 unit vectors of 128
dimensions, stored by ragged's own index store under the ``tiny-colpali``
preset's name (so a server can embed real queries against them):

- :func:`pages`: every vector drawn at random. Nothing on a page relates
  to anything else: the right input for timing, and the worst case for
  any summary of a page (a page of noise has no structure to keep).
- :func:`topic_page`: pages with structure, as real pages have. A fixed
  vocabulary of :data:`TOPICS` directions stands for the things pages
  show (drawn with Zipf-like frequencies, as words are); a page shows 3-8
  of them, each as a group of vectors near its direction (cosine about
  0.6-0.9, as a word or a figure spans several neighbouring patches), and
  30-60% of its vectors are near one of a few layout directions (margins,
  blank space: alike on every page). :func:`topic_query` makes a query
  about a page as real ones are: 12 vectors near 1-3 of the page's topics
  (what the question names) and 8 near a shared query-buffer direction
  (ColPali pads every query with the same augmentation tokens). Page
  ``n`` is the same in every run (its generator is seeded by ``n``).
  :func:`answer_page` makes a page that answers a query embedded by a
  real model (the server's benchmark plants them, so that its text
  queries have pages to find, as a user's do).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ragged.index.store import IndexStore

DIM = 128
DOC_PAGES = 100
MODEL = "tiny-colpali"


def pages(rng: np.random.Generator, count: int) -> list[np.ndarray]:
    """``count`` pages of unit vectors, each (600-800, DIM) float32."""
    out = []
    for n in rng.integers(600, 801, count):
        v = rng.standard_normal((int(n), DIM)).astype(np.float32)  # (n, dim)
        out.append(v / np.linalg.norm(v, axis=1, keepdims=True))
    return out


TOPICS = 16_384
_VOCAB = np.random.default_rng(20261206)
_TOPIC_VECTORS = _VOCAB.standard_normal((TOPICS, DIM)).astype(np.float32)  # (topics, dim)
_TOPIC_VECTORS /= np.linalg.norm(_TOPIC_VECTORS, axis=1, keepdims=True)
_LAYOUT = _VOCAB.standard_normal((16, DIM)).astype(np.float32)  # (layouts, dim)
_LAYOUT /= np.linalg.norm(_LAYOUT, axis=1, keepdims=True)
_BUFFER = _VOCAB.standard_normal(DIM).astype(np.float32)
_BUFFER /= np.linalg.norm(_BUFFER)
_WEIGHTS = 1.0 / np.arange(1, TOPICS + 1) ** 0.8
_WEIGHTS /= _WEIGHTS.sum()
_CUMULATIVE = np.cumsum(_WEIGHTS)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def page_topics(n: int) -> np.ndarray:
    """The topics page ``n`` shows (3-8 distinct topic numbers)."""
    rng = np.random.default_rng([7, n])
    count = int(rng.integers(3, 9))
    topics: list[int] = []
    while len(topics) < count:
        t = int(np.searchsorted(_CUMULATIVE, rng.random()))
        if t not in topics and t < TOPICS:
            topics.append(t)
    return np.array(topics)


def topic_page(n: int) -> np.ndarray:
    """Page ``n`` of the structured corpus: (600-800, DIM) float32 unit vectors."""
    topics = page_topics(n)
    rng = np.random.default_rng([8, n])
    size = int(rng.integers(600, 801))
    layout_count = int(size * rng.uniform(0.3, 0.6))
    layouts = rng.choice(len(_LAYOUT), 3, replace=False)
    layout = _LAYOUT[layouts[rng.integers(0, 3, layout_count)]] + 0.07 * rng.standard_normal((layout_count, DIM))
    owners = topics[rng.integers(0, len(topics), size - layout_count)]
    content = _TOPIC_VECTORS[owners] + rng.uniform(0.05, 0.11) * rng.standard_normal((size - layout_count, DIM))
    return _unit(np.concatenate([layout, content]))[rng.permutation(size)]


def topic_query(n: int, seed: int) -> np.ndarray:
    """A query about page ``n``: (20, DIM) float32 unit vectors."""
    rng = np.random.default_rng([9, seed, n])
    topics = page_topics(n)
    named = rng.choice(topics, min(int(rng.integers(1, 4)), len(topics)), replace=False)
    content = _TOPIC_VECTORS[named[rng.integers(0, len(named), 12)]] + 0.1 * rng.standard_normal((12, DIM))
    buffer = _BUFFER + 0.08 * rng.standard_normal((8, DIM))
    return _unit(np.concatenate([content, buffer]))


def answer_page(query: np.ndarray, n: int, strength: float) -> np.ndarray:
    """A page that answers ``query`` ((tokens, DIM) unit vectors, as a
    model embeds it): page ``n`` of the structured corpus with 5 vectors
    near each of the query's tokens in place of some of its own (cosine
    about ``strength``, as a page showing what the question names has
    patches close to its words): (600-800, DIM) float32 unit vectors."""
    page = topic_page(n).copy()  # (size, dim)
    rng = np.random.default_rng([10, n])
    near = np.repeat(np.asarray(query, dtype=np.float32), 5, axis=0)  # (5 * tokens, dim)
    noise = _unit(rng.standard_normal(near.shape))
    mixed = strength * near + np.sqrt(max(1.0 - strength**2, 0.0)) * noise  # cosine ~strength with its token
    page[rng.choice(len(page), min(len(mixed), len(page)), replace=False)] = mixed[: len(page)]
    return _unit(page)


def build_index(folder: Path, count: int, seed: int = 0) -> Path:
    """An index of ``count`` synthetic pages in documents of 100 (reused if present)."""
    if IndexStore.read_meta(folder) is not None and len(IndexStore.open(folder).catalog().pages) == count:
        return folder
    rng = np.random.default_rng(seed)
    with IndexStore.open_for_writing(folder, MODEL) as store:
        for start in range(0, count, DOC_PAGES):
            store.add_document(f"{seed:032x}{start:032x}", f"/synthetic/doc{start // DOC_PAGES}.pdf",
                               pages(rng, min(DOC_PAGES, count - start)))
    return folder


def write_pdfs(folder: Path, documents: int, pages: int, text: str = "document {n} quarterly revenue") -> Path:
    """``documents`` PDFs of ``pages`` letter pages each, with a text layer
    (``text``, formatted with the document number ``n``), in ``folder``."""
    from tests.inputs import blank_pdf

    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        (folder / f"doc{n:03d}.pdf").write_bytes(blank_pdf(pages, 612, 792, text=text.format(n=n)))
    return folder
