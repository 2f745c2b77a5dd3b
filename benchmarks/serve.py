"""The search service under load, against in-process search and one-off CLI calls.

    python -m benchmarks.serve [--pages 1000 10000] [--seconds 8] [--workdir DIR]

For each index size (synthetic pages of 600-800 vectors, built once into
``--workdir``), side by side in one run:

- the in-process MaxSim time of one query over the resident vectors (the
  same kind of query the clients send, embedded by the index's model: what
  the server's search costs without HTTP, queueing and embedding);
- a real ``ragged serve`` on loopback, loaded by 1, 8 and 32 concurrent
  clients, each sending different text queries back to back for
  ``--seconds`` (bounded in count and time): p50 and p95 latency and
  queries per second;
- the same with 1 and 8 clients while a real ``ragged ingest`` runs beside
  it (re-ingesting synthetic PDFs into a scratch index in a loop);
- the wall time of one ``ragged search --local`` process (import, model
  load, index open, search), the cost a server saves.

Every server listens on 127.0.0.1 only; every load loop stops by itself.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from benchmarks._process import process_seconds, ragged_command, ragged_env
from benchmarks._table import print_table
from benchmarks.synthetic import build_index, write_pdfs
from tests.serve.conftest import free_port, http

WORDS = ["revenue", "tart", "lemon", "rent", "deposit", "quarter", "growth", "butter", "tenant", "sugar", "annual",
         "profit", "landlord", "oven", "margin", "lease", "invoice", "summary", "table", "figure"]
MAX_REQUESTS = 2000  # per client: a load loop always ends


def in_process_maxsim(index: Path, cache: str, repeats: int = 5) -> tuple[float, int]:
    """(median seconds, query tokens) of one query over the resident vectors."""
    from ragged.embeddings import ColPaliEmbedder
    from ragged.gpu import Runtime
    from ragged.index.resident import ResidentIndex
    from ragged.index.search import MaxSimSearcher
    from ragged.index.store import IndexStore

    runtime = Runtime()
    manager = runtime.device_manager
    resident = ResidentIndex(IndexStore.open(index), manager.cpu(), manager)
    searcher = MaxSimSearcher(resident, manager.cpu(), runtime)
    rng = np.random.default_rng(3)
    with ColPaliEmbedder("tiny-colpali", device="cpu", cache_dir=cache) as embedder:
        queries = [embedder.embed_queries([" ".join(rng.choice(WORDS, 3))]) for _ in range(repeats)]
    times = []
    for query in queries:
        start = time.perf_counter()
        searcher.score_all(query)
        times.append(time.perf_counter() - start)
    resident.release()
    return statistics.median(times), int(queries[0][0].shape[0])


def load(url: str, clients: int, seconds: float) -> tuple[float, float, float]:
    """(p50 s, p95 s, queries per second) of ``clients`` clients for ``seconds``."""
    deadline = time.monotonic() + seconds
    latencies: list[float] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = np.random.default_rng(n)
        for _ in range(MAX_REQUESTS):
            if time.monotonic() > deadline:
                return
            query = " ".join(rng.choice(WORDS, 3))
            start = time.perf_counter()
            status, _ = http(url + "/search", {"query": query, "k": 10}, timeout=120)
            elapsed = time.perf_counter() - start
            if status == 200:
                with lock:
                    latencies.append(elapsed)

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.monotonic() - began
    ordered = sorted(latencies)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return statistics.median(ordered), p95, len(ordered) / wall


class Ingesting:
    """A real ``ragged ingest`` re-run in a loop beside the server, until stopped."""

    def __init__(self, folder: Path, cache: str) -> None:
        self.folder = folder
        write_pdfs(folder / "docs", 12, 6)
        self.env = ragged_env(cache)
        self.stop = threading.Event()
        self.runs = 0
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self.stop.is_set():
            shutil.rmtree(self.folder / "index", ignore_errors=True)
            proc = subprocess.Popen(ragged_command("ingest", str(self.folder / "docs"), "--model", "tiny-colpali",
                                           "--index", str(self.folder / "index"), "--json"),
                                    env=self.env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            while proc.poll() is None and not self.stop.is_set():
                time.sleep(0.1)
            if proc.poll() is None:
                proc.kill()
            proc.wait()
            self.runs += 1

    def __enter__(self) -> Ingesting:
        self.thread.start()
        time.sleep(3)  # past its start-up, into rendering and embedding
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def cli_search_seconds(index: Path, cache: str, repeats: int = 3) -> float:
    return process_seconds(["search", "quarterly revenue", "--index", str(index), "--local"], repeats,
                           env=ragged_env(cache))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--seconds", type=float, default=8.0, help="load per measurement")
    parser.add_argument("--workdir", type=Path, default=None, help="keep the built indexes here and reuse them")
    args = parser.parse_args()
    from loguru import logger

    logger.disable("ragged")
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ragged-serve-bench-"))
    cache = os.environ.get("RAGGED_CACHE_DIR") or str(work / "cache")
    rows = []
    for pages in args.pages:
        index = build_index(work / str(pages), pages)
        maxsim, tokens = in_process_maxsim(index, cache)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = ragged_env(cache)
        started = time.perf_counter()
        server = subprocess.Popen(ragged_command("serve", "--index", str(index), "--port", str(port),
                                                 "--idle-unload", "0"),
                                  env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            while time.perf_counter() - started < 600:
                try:
                    if http(url + "/ready", timeout=2)[0] == 200:
                        break
                except OSError:
                    pass
                time.sleep(0.25)
            ready_s = time.perf_counter() - started
            load(url, 1, 2.0)  # warm-up
            results = {c: load(url, c, args.seconds) for c in (1, 8, 32)}
            with Ingesting(work / "beside", cache) as beside:
                busy = {c: load(url, c, args.seconds) for c in (1, 8)}
            cli = cli_search_seconds(index, cache)
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(timeout=120)
        one = results[1]
        for clients, (p50, p95, qps) in results.items():
            rows.append((pages, clients, "-", f"{p50 * 1e3:.0f}", f"{p95 * 1e3:.0f}", f"{qps:.2f}",
                         f"{qps / one[2]:.1f}x", f"{p50 / maxsim:.2f}x" if clients == 1 else "-"))
        for clients, (p50, p95, qps) in busy.items():
            rows.append((pages, clients, f"yes ({beside.runs} runs)", f"{p50 * 1e3:.0f}", f"{p95 * 1e3:.0f}",
                         f"{qps:.2f}", "-", "-"))
        print(f"{pages} pages: in-process MaxSim {maxsim * 1e3:.0f} ms ({tokens}-token queries); server ready in "
              f"{ready_s:.1f} s; "
              f"one `ragged search --local` process {cli:.2f} s", flush=True)
    print_table(["pages", "clients", "ingest beside", "p50 ms", "p95 ms", "queries/s", "vs 1 client",
                 "p50 / in-process MaxSim"], rows)


if __name__ == "__main__":
    main()
