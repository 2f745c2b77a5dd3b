"""Retrieval quality by mode, and what the text side costs at ingest.

    python -m benchmarks.retrieval [--work .ragged/bench-retrieval] [--model tiny-colpali]
                                   [--real-size colmodernvbert-250m|none] [--real-pages 4]

The documents and labelled queries of ``benchmarks/retrieval_corpus.py``
(25 pages, 37 queries) are written as PDFs with a text layer, ingested
with the vision model and the default text model (all-MiniLM-L6-v2, real
weights), and every query is asked in each mode through one ``Searcher``.
Printed per mode and query kind: recall@1, recall@5 and MRR (the reciprocal
of the right page's rank, 0 when it is not among all the pages returned),
and the median time per query.

The offline vision presets have random weights: their rows measure the
machinery, not retrieval; a real checkpoint belongs there.

Then the text side's cost: passages per second and its share of the
ingest, as run (tiny vision preset), and projected for a real-size vision
model by timing that architecture's forward pass here on a few of the
same pages (``--real-size``; random weights, built offline by
``benchmarks/full_size.py``: the speed is the architecture's, the vectors
mean nothing). Both halves of the projection are measured on this machine.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from loguru import logger

from benchmarks._table import print_table
from benchmarks.retrieval_corpus import DOCUMENTS, QUERIES, Query
from examples.make_examples import text_pdf
from ragged.embeddings import ColPaliEmbedder
from ragged.ingest.documents import inspect, render_pages
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.report import IngestReport
from ragged.paths import cache_dir
from ragged.query.fusion import Ranking, fuse
from ragged.query.searcher import Searcher

MODES = ("keyword", "text", "vision", "hybrid")
STOP = {"a", "an", "and", "are", "at", "be", "by", "do", "does", "for", "from", "get", "how", "i", "in", "is", "it",
        "my", "of", "on", "or", "the", "to", "what", "when", "which", "who", "will", "with", "your", "am", "not",
        "should", "after", "before", "once", "over", "per"}


def words(text: str) -> set[str]:
    """Content words, lower case, a plural's final s dropped (a crude stem)."""
    found = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z-]+", text)}
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in found} - STOP


def shared_words(query: Query) -> set[str]:
    """Content words a query shares with the page it should find."""
    return words(query.text) & words(" ".join(DOCUMENTS[query.document][query.page - 1]))


def write_corpus(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pages in DOCUMENTS.items():
        (folder / name).write_bytes(text_pdf(pages))


Key = tuple[str, int]  # (document file name, 1-based page)


def ranked(searcher: Searcher, query: Query, mode: str, pages: int) -> tuple[list[Key], float]:
    """The pages returned for ``query`` in ``mode``, best first, and the query's seconds."""
    started = time.perf_counter()
    result = searcher.search(query.text, k=pages, mode=mode)
    return [(Path(h.path).name, h.page) for h in result.hits], time.perf_counter() - started


def fused(lists: dict[str, list[Key]], pages: int) -> list[Key]:
    """Reciprocal rank fusion of some modes' lists, by ragged's own ``fuse``."""
    keys = sorted({key for found in lists.values() for key in found})
    where = {key: n for n, key in enumerate(keys)}
    rankings = {mode: Ranking(np.array([where[k] for k in found], dtype=np.int64), np.zeros(len(found)))
                for mode, found in lists.items()}
    return [keys[f.position] for f in fuse(rankings, pages)]


def row(label: str, kind: str, chosen: list[Query], found: dict[Query, list[Key]],
        seconds: dict[Query, float] | None) -> tuple[object, ...]:
    ranks = [found[q].index((q.document, q.page)) + 1 if (q.document, q.page) in found[q] else None
             for q in chosen]
    ms = f"{statistics.median(seconds[q] for q in chosen) * 1000:.1f}" if seconds else "-"
    return (label, kind, len(chosen), f"{sum(r == 1 for r in ranks) / len(ranks):.2f}",
            f"{sum(r is not None and r <= 5 for r in ranks) / len(ranks):.2f}",
            f"{sum(1 / r for r in ranks if r) / len(ranks):.3f}", ms)


def quality(index: Path, pages: int) -> list[tuple[object, ...]]:
    """One row per mode and query kind (and all kinds together), then the
    fusion of text and keyword alone: hybrid as it would be with a vision
    model that adds nothing, to tell the fusion's effect from the preset's noise."""
    found: dict[str, dict[Query, list[Key]]] = {}
    rows: list[tuple[object, ...]] = []
    with Searcher(index, cache_dir=cache_dir()) as searcher:
        for mode in MODES:
            searcher.search(QUERIES[0].text, k=1, mode=mode)  # warm-up: load the mode's models
            answers = {q: ranked(searcher, q, mode, pages) for q in QUERIES}
            found[mode] = {q: a[0] for q, a in answers.items()}
            for kind in ("paraphrase", "exact", "all"):
                chosen = [q for q in QUERIES if kind in ("all", q.kind)]
                rows.append(row(mode, kind, chosen, found[mode], {q: a[1] for q, a in answers.items()}))
    both = {q: fused({m: found[m][q] for m in ("text", "keyword")}, pages) for q in QUERIES}
    for kind in ("paraphrase", "exact", "all"):
        rows.append(row("text+keyword", kind, [q for q in QUERIES if kind in ("all", q.kind)], both, None))
    return rows


def real_size_seconds_per_page(name: str, docs: Path, n_pages: int, dpi: int) -> float:
    """Seconds per page of the real-size architecture ``name`` on this machine
    (random weights; best of two passes over ``n_pages`` pages)."""
    from benchmarks.full_size import build

    folder = build(name, cache_dir() / "full-size" / name, cache_dir(), torch.device("cpu"), torch.float32)
    doc = inspect(docs / next(iter(DOCUMENTS)))
    images = [p.image for p in render_pages(doc, dpi)]
    images = (images * n_pages)[:n_pages]
    with ColPaliEmbedder(str(folder), device="cpu", cache_dir=cache_dir(), batch_size=n_pages) as embedder:
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            embedder.embed_images(images)
            best = min(best, time.perf_counter() - started)
    return best / n_pages


def cost_rows(report: IngestReport, real: tuple[str, float] | None) -> list[tuple[object, ...]]:
    """The text side's throughput and share of ingest, as run and projected."""
    text_per_page = report.text_seconds / report.pages_added
    vision_per_page = report.embed_seconds / report.pages_added
    rows: list[tuple[object, ...]] = [
        (report.model, report.pages_added, report.passages, f"{report.passages / report.text_seconds:.1f}",
         f"{vision_per_page:.3f}", f"{text_per_page:.3f}", f"{report.text_seconds / report.seconds:.0%}",
         "measured (whole ingest)")]
    if real is not None:
        name, seconds = real
        share = text_per_page / (text_per_page + seconds)
        rows.append((name, "-", "-", "-", f"{seconds:.3f}", f"{text_per_page:.3f}", f"{share:.1%}",
                     "projected: text / (text + vision), each measured here"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path(".ragged/bench-retrieval"))
    parser.add_argument("--model", default="tiny-colpali")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--real-size", default="colmodernvbert-250m", help="or 'none' to skip the projection")
    parser.add_argument("--real-pages", type=int, default=4)
    args = parser.parse_args()
    logger.remove()
    docs, index = args.work / "docs", args.work / "index"
    shutil.rmtree(args.work, ignore_errors=True)
    write_corpus(docs)
    pages = sum(len(p) for p in DOCUMENTS.values())
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(DOCUMENTS)} documents, "
          f"{pages} pages, {len(QUERIES)} queries ({sum(q.kind == 'paraphrase' for q in QUERIES)} paraphrase)")
    slips = [(q.text, sorted(shared_words(q))) for q in QUERIES if q.kind == "paraphrase" and shared_words(q)]
    print("paraphrases sharing a content word with their page:", slips or "none")

    report = ingest([docs], IngestOptions(index_dir=index, model=args.model, dpi=args.dpi, cache_dir=cache_dir()))
    if report.pages_added != pages or report.problems:
        raise SystemExit(f"ingest went wrong: {report.pages_added} pages, problems {report.problems}")
    print(f"\nRetrieval ({args.model} for vision, {report.text_model} for text; "
          "vision rows mean nothing with a random-weight preset)")
    print_table(["mode", "queries", "n", "recall@1", "recall@5", "MRR", "median ms"], quality(index, pages))

    real = None
    if args.real_size != "none":
        real = (args.real_size, real_size_seconds_per_page(args.real_size, docs, args.real_pages, args.dpi))
    print("\nText side at ingest (CPU)")
    print_table(["vision model", "pages", "passages", "passages/s", "vision s/page", "text s/page",
                 "text share", "how"], cost_rows(report, real))


if __name__ == "__main__":
    main()
