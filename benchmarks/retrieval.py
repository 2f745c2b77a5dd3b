"""Retrieval quality by mode on two labelled corpora, hybrid against the
best single mode, and what the text side costs at ingest.

    python -m benchmarks.retrieval [--work .ragged/bench-retrieval] [--model tiny-colpali]
                                   [--corpus all|notes|reference]
                                   [--real-size colmodernvbert-250m|none] [--real-pages 4]

Two corpora, each written as PDFs with a text layer, ingested with the
vision model and the default text model (all-MiniLM-L6-v2, real weights):
``notes`` (``benchmarks/retrieval_corpus.py``: 25 short pages on unrelated
subjects, 37 queries) and ``reference`` (``benchmarks/retrieval_corpus_reference.py``:
48 pages of the Python Language Reference as this Python ships it, 44
queries). Every query is asked in each mode through one ``Searcher``.
Printed per corpus, mode and query kind: recall@1, recall@5 and MRR (the
reciprocal of the right page's rank, 0 when it is not among all the pages
returned), and the median time per query; then, per corpus, hybrid against
the best single mode (hybrid must reach 0.95 of it), and the weights the
fusion learned for each signal on that index.

The offline vision presets have random weights: their rows measure the
machinery, not retrieval, and the fusion must survive them (that is the
point of the comparison); a real checkpoint belongs there too.

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
from dataclasses import dataclass
from pathlib import Path

import torch
from loguru import logger

from benchmarks import retrieval_corpus, retrieval_corpus_reference
from benchmarks._table import print_table
from benchmarks.retrieval_corpus import Query
from benchmarks.retrieval_fusion import Scored, variants
from examples.make_examples import text_pdf
from ragged.embeddings import ColPaliEmbedder
from ragged.ingest.documents import inspect, render_pages
from ragged.ingest.pipeline import IngestOptions, ingest
from ragged.ingest.report import IngestReport
from ragged.paths import cache_dir
from ragged.query.searcher import Searcher
from ragged.query.weights import SignalWeights

MODES = ("keyword", "text", "vision", "hybrid")
SINGLE = ("keyword", "text", "vision")
TARGET = 0.95  # hybrid must reach this share of the best single mode
Documents = dict[str, list[list[str]]]
STOP = {"a", "an", "and", "are", "at", "be", "by", "do", "does", "for", "from", "get", "how", "i", "in", "is", "it",
        "my", "of", "on", "or", "the", "to", "what", "when", "which", "who", "will", "with", "your", "am", "not",
        "should", "after", "before", "once", "over", "per"}


def words(text: str) -> set[str]:
    """Content words, lower case, a plural's final s dropped (a crude stem)."""
    found = {w.lower() for w in re.findall(r"[A-Za-z][A-Za-z-]+", text)}
    return {w[:-1] if w.endswith("s") and len(w) > 3 else w for w in found} - STOP


def shared_words(documents: Documents, query: Query) -> set[str]:
    """Content words a query shares with the page it should find."""
    return words(query.text) & words(" ".join(documents[query.document][query.page - 1]))


def corpora(which: str) -> list[tuple[str, Documents, list[Query]]]:
    """(name, documents, queries) of the corpora asked for."""
    chosen = []
    if which in ("all", "notes"):
        chosen.append(("notes", retrieval_corpus.DOCUMENTS, retrieval_corpus.QUERIES))
    if which in ("all", "reference"):
        documents, queries, left_out = retrieval_corpus_reference.build()
        for reason in left_out:
            print(f"reference corpus: left out {reason}")
        chosen.append(("reference", documents, queries))
    return chosen


def write_corpus(folder: Path, documents: Documents) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, pages in documents.items():
        (folder / name).write_bytes(text_pdf(pages))


Key = tuple[str, int]  # (document file name, 1-based page)


def ranked(searcher: Searcher, query: Query, mode: str, pages: int) -> tuple[list[tuple[Key, float]], float]:
    """The pages returned for ``query`` in ``mode`` with their scores, best
    first, and the query's seconds."""
    started = time.perf_counter()
    result = searcher.search(query.text, k=pages, mode=mode)
    return [((Path(h.path).name, h.page), h.score) for h in result.hits], time.perf_counter() - started


def ranks_of(chosen: list[Query], found: dict[Query, list[Key]]) -> list[int | None]:
    """The right page's rank for each query (None: not returned)."""
    return [found[q].index((q.document, q.page)) + 1 if (q.document, q.page) in found[q] else None for q in chosen]


def recall_at(ranks: list[int | None], n: int) -> float:
    return sum(r is not None and r <= n for r in ranks) / len(ranks)


def mrr(ranks: list[int | None]) -> float:
    return sum(1 / r for r in ranks if r) / len(ranks)


def row(label: str, kind: str, chosen: list[Query], found: dict[Query, list[Key]],
        seconds: dict[Query, float]) -> tuple[object, ...]:
    ranks = ranks_of(chosen, found)
    ms = f"{statistics.median(seconds[q] for q in chosen) * 1000:.1f}"
    return (label, kind, len(chosen), f"{recall_at(ranks, 1):.2f}", f"{recall_at(ranks, 5):.2f}",
            f"{mrr(ranks):.3f}", ms)


@dataclass
class Measured:
    """What one corpus gave: the table's rows, each mode's ranks and scored
    rankings, the learned weights."""

    rows: list[tuple[object, ...]]
    ranks: dict[str, list[int | None]]
    scored: Scored
    learned: SignalWeights

    @property
    def weights(self) -> str:
        return (f"vision {self.learned.vision:.2f}, text {self.learned.text:.2f}, keyword per hit "
                f"({self.learned.probes} probes)")


def quality(index: Path, pages: int, queries: list[Query]) -> Measured:
    """One row per mode and query kind (and all kinds together)."""
    rows: list[tuple[object, ...]] = []
    ranks: dict[str, list[int | None]] = {}
    scored: Scored = {}
    with Searcher(index, cache_dir=cache_dir()) as searcher:
        for mode in MODES:
            searcher.search(queries[0].text, k=1, mode=mode)  # warm-up: load the mode's models
            answers = {q: ranked(searcher, q, mode, pages) for q in queries}
            scored[mode] = {q: a[0] for q, a in answers.items()}
            found = {q: [key for key, _ in a[0]] for q, a in answers.items()}
            ranks[mode] = ranks_of(queries, found)
            for kind in ("paraphrase", "exact", "all"):
                chosen = [q for q in queries if kind in ("all", q.kind)]
                rows.append(row(mode, kind, chosen, found, {q: a[1] for q, a in answers.items()}))
        learned = searcher.engine.weights(searcher.source.catalog)
    return Measured(rows, ranks, scored, learned)


def versus_best(name: str, measured: Measured) -> list[tuple[object, ...]]:
    """Hybrid against the best single mode on one corpus, by recall@1 and by MRR."""
    rows: list[tuple[object, ...]] = []
    for metric, value in (("recall@1", lambda r: recall_at(r, 1)), ("MRR", mrr)):
        scores = {mode: value(measured.ranks[mode]) for mode in SINGLE}
        best = max(scores, key=lambda m: scores[m])
        hybrid = value(measured.ranks["hybrid"])
        ratio = hybrid / scores[best] if scores[best] else float("inf")
        rows.append((name, metric, *(f"{scores[m]:.3f}" for m in SINGLE), f"{hybrid:.3f}", best, f"{ratio:.2f}",
                     "yes" if ratio >= TARGET else "NO"))
    return rows


def real_size_seconds_per_page(name: str, docs: Path, n_pages: int, dpi: int) -> float:
    """Seconds per page of the real-size architecture ``name`` on this machine
    (random weights; best of two passes over ``n_pages`` pages)."""
    from benchmarks.full_size import build

    folder = build(name, cache_dir() / "full-size" / name, cache_dir(), torch.device("cpu"), torch.float32)
    doc = inspect(sorted(docs.glob("*.pdf"))[0])
    images = [p.image for p in render_pages(doc, dpi)]
    images = (images * n_pages)[:n_pages]
    with ColPaliEmbedder(str(folder), device="cpu", cache_dir=cache_dir(), batch_size=n_pages) as embedder:
        best = float("inf")
        for _ in range(2):
            started = time.perf_counter()
            embedder.embed_images(images)
            best = min(best, time.perf_counter() - started)
    return best / n_pages


def run_corpus(work: Path, name: str, documents: Documents, queries: list[Query], model: str,
               dpi: int) -> tuple[Measured, IngestReport, Path]:
    """Write, ingest and query one corpus; print its table."""
    docs, index = work / name / "docs", work / name / "index"
    write_corpus(docs, documents)
    pages = sum(len(p) for p in documents.values())
    print(f"\n{name}: {len(documents)} documents, {pages} pages, {len(queries)} queries "
          f"({sum(q.kind == 'paraphrase' for q in queries)} paraphrase)")
    slips = [(q.text, sorted(shared_words(documents, q))) for q in queries
             if q.kind == "paraphrase" and shared_words(documents, q)]
    print(f"  paraphrases sharing a content word with their page: {len(slips)}", slips if len(slips) <= 5 else "")
    report = ingest([docs], IngestOptions(index_dir=index, model=model, dpi=dpi, cache_dir=cache_dir()))
    if report.pages_added != pages or report.problems:
        raise SystemExit(f"ingest went wrong: {report.pages_added} pages, problems {report.problems}")
    measured = quality(index, pages, queries)
    print(f"Retrieval on {name} ({model} for vision, {report.text_model} for text; fusion weights learned: "
          f"{measured.weights})")
    print_table(["mode", "queries", "n", "recall@1", "recall@5", "MRR", "median ms"], measured.rows)
    return measured, report, docs


def cost_rows(report: IngestReport, real: tuple[str, float] | None) -> list[tuple[object, ...]]:
    """The text side's throughput and share of ingest, as run and projected."""
    text_per_page = report.text.seconds / report.pages_added
    vision_per_page = report.vision.seconds / report.pages_added
    rows: list[tuple[object, ...]] = [
        (report.model, report.pages_added, report.text.items, f"{report.text.items / report.text.seconds:.1f}",
         f"{vision_per_page:.3f}", f"{text_per_page:.3f}", f"{report.text.seconds / report.seconds:.0%}",
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
    parser.add_argument("--corpus", choices=["all", "notes", "reference"], default="all")
    parser.add_argument("--dpi", type=int, default=150)
    parser.add_argument("--real-size", default="colmodernvbert-250m", help="or 'none' to skip the projection")
    parser.add_argument("--real-pages", type=int, default=4)
    args = parser.parse_args()
    logger.remove()
    shutil.rmtree(args.work, ignore_errors=True)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; vision rows mean nothing with a "
          "random-weight preset")
    comparison: list[tuple[object, ...]] = []
    replayed: list[tuple[object, ...]] = []
    first: tuple[IngestReport, Path] | None = None
    for name, documents, queries in corpora(args.corpus):
        measured, report, docs = run_corpus(args.work, name, documents, queries, args.model, args.dpi)
        comparison.extend(versus_best(name, measured))
        replayed.extend(variants(name, measured.scored, documents, queries, measured.learned))
        first = first or (report, docs)
    print(f"\nHybrid against the best single mode (target: hybrid >= {TARGET} x best)")
    print_table(["corpus", "metric", *SINGLE, "hybrid", "best single", "hybrid / best", "met"], comparison)
    print("\nFusion variants replayed on the same rankings (K: the rank constant; see benchmarks/retrieval_fusion.py)")
    print_table(["corpus", "K", "weights", "recall@1", "MRR"], replayed)
    assert first is not None
    report, docs = first

    real = None
    if args.real_size != "none":
        real = (args.real_size, real_size_seconds_per_page(args.real_size, docs, args.real_pages, args.dpi))
    print("\nText side at ingest (CPU)")
    print_table(["vision model", "pages", "passages", "passages/s", "vision s/page", "text s/page",
                 "text share", "how"], cost_rows(report, real))


if __name__ == "__main__":
    main()
