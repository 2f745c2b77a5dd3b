"""Search measurements of the index-growth benchmark (:mod:`benchmarks.scale_index`).

- in-process: exact and candidate search interleaved, one query at a time,
  with agreement (share of the exact top 10 found, identical rank 1);
- a fresh process: ``ragged search --local`` (wall, and its own figure
  after imports: catalog, query model, embedding, search), and a small
  process that opens the index and searches a synthetic query after its
  imports (the search alone);
- ``ragged serve`` on loopback: p50/p95 of a bounded number of text
  queries that pages answer (the index gets one planted document of
  :data:`ANSWER_PAGES` pages for each, :func:`plant_answers`: the
  tiny preset's random weights match no synthetic page, so without them
  every query would be the candidate stage's worst case, a page set it
  cannot tell apart), its resident form and why, and its memory;
- peers on the same vectors: LanceDB's own multivector search and
  Qdrant's local mode (pooled prefetch, full MaxSim rerank), each on the
  first pages of the index (a subset: both are too slow or too large for
  the whole).
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks._process import ragged_command, ragged_env
from benchmarks.synthetic import DIM, MODEL, answer_page, topic_page
from ragged.gpu import DeviceManager, Runtime
from ragged.index.catalog import Catalog
from ragged.index.search import MaxSimSearcher, SegmentSource
from ragged.index.store import IndexStore, StoredPage
from ragged.multivector.pooling import pool_page
from tests.serve.conftest import free_port, http

TEXT_QUERIES = ["quarterly revenue by region", "termination notice period", "how to fix a flat tyre",
                "annual leave carried over", "lemon tart baking time", "claims line phone number",
                "telescope mirror cleaning", "working from home equipment", "sourdough starter feeding",
                "brake pad replacement torque"]
ANSWER_PAGES = 10  # a planted document's pages: one query's answers, from close to loose


def served_queries(count: int) -> list[str]:
    """The ``count`` text queries the server benchmark sends (each different)."""
    return [f"{TEXT_QUERIES[n % len(TEXT_QUERIES)]} {n}" for n in range(count)]


def _answer_hash(text: str) -> str:
    return hashlib.sha256(f"answers to {text}".encode()).hexdigest()


def plant_answers(index: Path, cache: str, texts: list[str]) -> int:
    """Give each of ``texts`` a document of pages that answer it as the
    index's model embeds it (:func:`benchmarks.synthetic.answer_page`),
    where the index has none yet: pages added. They stay in the index (a
    reused ``--workdir`` keeps them: 10 pages a served query, counted in
    the page labels of later sizes; growth numbers its pages without them)."""
    from ragged.embeddings import ColPaliEmbedder

    have = set(IndexStore.open(index).catalog().documents)
    missing = [t for t in texts if _answer_hash(t) not in have]
    if not missing:
        return 0
    with ColPaliEmbedder(MODEL, device="cpu", cache_dir=cache) as embedder:
        queries = [np.asarray(q, dtype=np.float32) for q in embedder.embed_queries(missing)]  # (tokens, dim) each
    with IndexStore.open_for_writing(index, MODEL) as store:
        for text, query in zip(missing, queries, strict=True):
            digest = _answer_hash(text)
            first = 10**9 + int(digest[:8], 16)  # page numbers no grown page has
            pages = [StoredPage(answer_page(query, first + i, 0.9 - 0.03 * i), None, text)
                     for i in range(ANSWER_PAGES)]
            store.add_document(digest, f"/synthetic/answers/{digest[:12]}.pdf", pages)
        store.finish()
    return len(missing) * ANSWER_PAGES


def key(hit: Any) -> tuple[str, int]:
    return hit.doc_hash, hit.page


def agreement(exact: list[list[Any]], found: list[list[Any]]) -> tuple[float, float]:
    """(share of each exact top 10 found, share with the same first page), averaged over queries."""
    shares = [len({key(h) for h in e} & {key(h) for h in f}) / max(len(e), 1) for e, f in zip(exact, found,
                                                                                            strict=True)]
    same = [key(e[0]) == key(f[0]) for e, f in zip(exact, found, strict=True)]
    return float(np.mean(shares)), float(np.mean(same))


def prefix(catalog: Catalog, pages: int) -> Catalog:
    """The first ``pages`` pages of ``catalog`` (whole documents)."""
    kept = catalog.pages[:pages]
    docs = list(dict.fromkeys(p.doc_hash for p in kept))
    keep = set(docs)
    return Catalog(kept, docs, {h: e for h, e in catalog.extents.items() if h in keep}, catalog.lance_version,
                   catalog.stamp, {h: e for h, e in catalog.pooled.items() if h in keep})


def in_process(index: Path, queries: list[np.ndarray], pages: int | None = None) -> dict[str, Any]:
    """Exact and candidate search, interleaved: median seconds, agreement, hits."""
    runtime = Runtime(DeviceManager())
    store = IndexStore.open(index)
    catalog = store.catalog() if pages is None else prefix(store.catalog(), pages)
    searcher = MaxSimSearcher(SegmentSource(store, catalog), runtime.device("cpu"), runtime)
    exact, found, exact_s, cand_s = [], [], [], []
    for query in queries:
        started = time.perf_counter()
        found.append(searcher.search([query], 10, exact=False)[0])
        cand_s.append(time.perf_counter() - started)
        started = time.perf_counter()
        exact.append(searcher.search([query], 10)[0])
        exact_s.append(time.perf_counter() - started)
    share, same = agreement(exact, found)
    return {"exact_s": statistics.median(exact_s), "cand_s": statistics.median(cand_s), "found": share,
            "rank1": same, "exact": exact, "catalog": catalog}


FRESH = """
import sys, time, json
import numpy as np
from ragged.gpu import DeviceManager, Runtime
from ragged.index.search import MaxSimSearcher
from ragged.index.store import IndexStore
from benchmarks.synthetic import topic_query
query = topic_query(int(sys.argv[2]), seed=5)
if sys.argv[4:] == ["no-hints"] and hasattr(__import__("os"), "posix_fadvise"):
    import os
    del os.posix_fadvise  # as before the read-ahead hints: every block read by its own page faults
started = time.perf_counter()
runtime = Runtime(DeviceManager())
store = IndexStore.open(__import__("pathlib").Path(sys.argv[1]))
hits = MaxSimSearcher(store, runtime.device("cpu"), runtime).search([query], 10, exact=sys.argv[3] == "exact")
print(json.dumps({"seconds": time.perf_counter() - started, "pages": len(store.catalog().pages)}))
"""


def fresh_process(index: Path, target: int, exact: bool = False, *, cold: bool = False, hints: bool = True) -> float:
    """Seconds a fresh process takes, after its imports, to open the index and
    search a synthetic query; ``cold``: with the index's files dropped from
    the page cache first (as after a reboot, or once other work pushed them
    out); ``hints`` False: without the read-ahead hints (as before them)."""
    if cold:
        evict(index)
    done = subprocess.run([sys.executable, "-c", FRESH, str(index), str(target), "exact" if exact else "candidates",
                           *([] if hints else ["no-hints"])],
                          capture_output=True, text=True, check=True, timeout=900, cwd=Path(__file__).parent.parent)
    return float(json.loads(done.stdout.strip().splitlines()[-1])["seconds"])


def evict(index: Path) -> None:
    """Drop the index's files from the page cache (``posix_fadvise`` DONTNEED: no privileges, nothing else touched)."""
    for path in index.rglob("*"):
        if path.is_file() and not path.is_symlink():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def cli_search(index: Path, cache: str, query: str, exact: bool = False) -> tuple[float, float]:
    """(wall seconds, seconds after imports as the command reports them) of one ``ragged search --local``."""
    started = time.perf_counter()
    done = subprocess.run(ragged_command("search", query, "--index", str(index), "--local", "--mode", "vision",
                                         "--json", *(["--exact"] if exact else [])),
                          env=ragged_env(cache), capture_output=True, text=True, check=True, timeout=900)
    wall = time.perf_counter() - started
    return wall, float(json.loads(done.stdout)["seconds"])


def _status(pid: int) -> dict[str, int]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "RssAnon", "RssFile", "VmHWM", "VmSwap"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def _form(url: str) -> tuple[str, str, str]:
    """(form, reason, loading) from the server's /metrics."""
    _, body = http(url + "/metrics", timeout=30)
    text = body.decode() if isinstance(body, bytes) else str(body)
    for line in text.splitlines():
        if line.startswith("ragged_resident_form{"):
            labels = dict(part.split("=", 1) for part in line[line.index("{") + 1 : line.rindex("}")].split('",'))
            clean = {k.strip(): v.strip().strip('"') for k, v in labels.items()}
            return clean.get("form", ""), clean.get("reason", ""), clean.get("loading", "")
    return "", "", ""


def serve(index: Path, cache: str, queries: int, exact_queries: int) -> dict[str, Any]:
    """A ``ragged serve`` on loopback: ready time, p50/p95 of ``queries`` sequential
    queries (and of ``exact_queries`` with ``"exact": true``), form, memory."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = index.parent / "serve.log"
    started = time.perf_counter()
    with log.open("w") as out:
        server = subprocess.Popen(ragged_command("serve", "--index", str(index), "--port", str(port),
                                                 "--idle-unload", "0"), env=ragged_env(cache), stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        while time.perf_counter() - started < 900:
            try:
                if http(url + "/ready", timeout=2)[0] == 200 and not _form(url)[2]:
                    break  # ready, and nothing loading in the background
            except OSError:
                pass
            time.sleep(0.5)
        ready = time.perf_counter() - started
        http(url + "/search", {"query": TEXT_QUERIES[0], "k": 10, "mode": "vision"}, timeout=600)  # warm-up
        latencies, exact_latencies, scored, found = [], [], [], []
        for text in served_queries(queries):
            began = time.perf_counter()
            status, answer = http(url + "/search", {"query": text, "k": 10, "mode": "vision"}, timeout=600)
            if status == 200:
                latencies.append(time.perf_counter() - began)
                scored.append(int(answer.get("pages_scored") or 0))
                found.append(_answers_found(answer, text))
        for text in served_queries(exact_queries):
            began = time.perf_counter()
            status, _ = http(url + "/search", {"query": text, "k": 10, "mode": "vision", "exact": True}, timeout=900)
            if status == 200:
                exact_latencies.append(time.perf_counter() - began)
        form, reason, _ = _form(url)
        memory = _status(server.pid)
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=120)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    ordered = sorted(latencies)
    start_line = next((line.strip() for line in log.read_text().splitlines() if "pages of" in line), "")
    return {"ready_s": ready, "p50": statistics.median(ordered), "p95": ordered[min(len(ordered) - 1,
                                                                                   int(0.95 * len(ordered)))],
            "exact_p50": statistics.median(exact_latencies) if exact_latencies else None, "form": form,
            "scored": statistics.median(scored) if scored else None,
            "found": float(np.mean(found)) if found else None,
            "reason": reason, "memory": memory, "start_line": start_line}


def _answers_found(answer: Any, text: str) -> float:
    """Share of the server's top 10 that are the pages planted for ``text``."""
    planted = f"/synthetic/answers/{_answer_hash(text)[:12]}.pdf"
    hits = answer.get("hits") or []
    return sum(str(h.get("path", "")).endswith(planted) for h in hits) / ANSWER_PAGES


def lance_peer(folder: Path, pages: int, queries: list[np.ndarray]) -> tuple[float, list[list[int]]]:
    """LanceDB's own flat multivector search (f32 table, cosine) over pages 0..``pages``-1:
    (median seconds, top-10 page numbers per query); the table is built once in ``folder``."""
    import pyarrow as pa

    from ragged.index.page_table import lancedb

    db = lancedb().connect(str(folder))
    if "pages" not in db.table_names():
        table = None
        for start in range(0, pages, 100):
            batch = [topic_page(n) for n in range(start, min(pages, start + 100))]
            flat = pa.array(np.concatenate(batch).reshape(-1), type=pa.float32())
            offsets = pa.array(np.concatenate([[0], np.cumsum([len(b) for b in batch])]).astype(np.int32))
            rows = pa.table({"id": pa.array(range(start, start + len(batch)), pa.int32()),
                             "vector": pa.ListArray.from_arrays(offsets, pa.FixedSizeListArray.from_arrays(flat, DIM))})
            if table is None:
                table = db.create_table("pages", data=rows)
            else:
                table.add(rows)
    table = db.open_table("pages")
    times, tops = [], []
    for query in queries:
        started = time.perf_counter()
        result = table.search(query).distance_type("cosine").limit(10).to_arrow()
        times.append(time.perf_counter() - started)
        tops.append([int(x) for x in result.column("id").to_pylist()])
    return statistics.median(times), tops


def qdrant_peer(pages: int, queries: list[np.ndarray], prefetch: int = 200) -> tuple[float, list[list[int]], int]:
    """Qdrant's local mode with pooled multivectors (the same 16 centroids a
    page ragged stores) as a prefetch and full MaxSim rerank of its best
    ``prefetch``: (median seconds, top-10 page numbers per query, peak RSS bytes)."""
    import resource

    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    params = models.VectorParams(size=DIM, distance=models.Distance.DOT, multivector_config=models.MultiVectorConfig(
        comparator=models.MultiVectorComparator.MAX_SIM))
    client.create_collection("pages", vectors_config={"pooled": params, "full": params})
    batch = []
    for n in range(pages):
        vectors = topic_page(n)
        batch.append(models.PointStruct(id=n, vector={"pooled": pool_page(vectors).tolist(), "full": vectors.tolist()}))
        if len(batch) == 50 or n == pages - 1:
            client.upsert("pages", batch)
            batch = []
    times, tops = [], []
    for query in queries:
        started = time.perf_counter()
        found = client.query_points("pages", query=query.tolist(), using="full", limit=10, prefetch=models.Prefetch(
            query=query.tolist(), using="pooled", limit=prefetch))
        times.append(time.perf_counter() - started)
        tops.append([int(p.id) for p in found.points])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    client.close()
    return statistics.median(times), tops, peak


def page_numbers(hits: list[Any], catalog: Catalog) -> list[int]:
    """Synthetic page numbers of hits (documents of 10 pages, numbered by their first page)."""
    return [int(h.doc_hash, 16) + h.page - 1 for h in hits]


def environment() -> str:
    """The load average, for the record (the machine is shared)."""
    return " ".join(f"{x:.1f}" for x in os.getloadavg())
