"""Office, web and text documents: conversion throughput and memory, and MCP search latency.

    nice -n 10 python -m benchmarks.documents [--files 60] [--workdir DIR] [--searches 20]

Side by side in one run:

- converting a mixed corpus (docx, pptx, xlsx, odt, rtf, html, md, txt;
  several pages each) with the pool the memory policy allows, LibreOffice
  converting a batch of files per process (ragged's way), against one
  process per file: pages/s, files/s, peak resident memory of the largest
  LibreOffice process tree;
- a 200-page .docx: conversion time and LibreOffice's peak memory against
  the share of the memory policy's budget one converter may use, then its
  200 pages rendered through ingest's page path, this process's peak;
- the renderer for .html/.md/.txt: LibreOffice (what ragged uses) against
  headless Chromium's print-to-PDF, where Chromium is installed: seconds
  per file and whether the PDF keeps a text layer;
- MCP ``search`` round trips from the SDK's own client over stdio, warm,
  through a running ``ragged serve`` and in the MCP process itself (demo
  index of the sample PDFs, tiny-colpali).

Every server listens on 127.0.0.1 and is stopped at the end; every loop is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks._process import ragged_env
from benchmarks._table import print_table
from tests.inputs import EXAMPLES
from tests.office_inputs import FIRST, write_docx, write_html, write_md, write_odt, write_pptx, write_rtf, write_txt

KINDS = {".docx": write_docx, ".pptx": write_pptx, ".odt": write_odt, ".rtf": write_rtf, ".html": write_html,
         ".md": write_md, ".txt": write_txt}


def write_corpus(folder: Path, files: int) -> list[Path]:
    """``files`` documents, kinds in turn, each of a few pages."""
    folder.mkdir(parents=True, exist_ok=True)
    kinds = [*KINDS, ".xlsx"]
    paths = []
    for n in range(files):
        suffix = kinds[n % len(kinds)]
        path = folder / f"doc{n:03d}{suffix}"
        if suffix == ".xlsx":
            write_sheets(path, sheets=4)
        elif suffix == ".docx":
            write_long_docx(path, pages=8, label=f"document {n}")
        else:
            KINDS[suffix](path, f"phrase number {n} on the second page")
        paths.append(path)
    return paths


def write_sheets(path: Path, sheets: int) -> None:
    from openpyxl import Workbook

    book = Workbook()
    for s in range(sheets):
        sheet = book.active if s == 0 else book.create_sheet()
        sheet.title = f"S{s}"
        for row in range(1, 40):
            sheet.append([f"item {row}", row * s, "note"])
    book.save(str(path))


def write_long_docx(path: Path, pages: int, label: str) -> None:
    import docx
    from docx.enum.text import WD_BREAK

    document = docx.Document()
    for page in range(pages):
        document.add_heading(f"{label}, section {page + 1}", level=1)
        for _ in range(5):
            document.add_paragraph(FIRST * 3)
        if page + 1 < pages:
            document.add_paragraph().add_run().add_break(WD_BREAK.PAGE)
    document.save(str(path))


def convert(paths: list[Path], index: Path, batch_files: int) -> dict[str, Any]:
    """Convert ``paths`` into ``index``'s kept PDFs, ``batch_files`` per LibreOffice process."""
    from ragged.gpu.runtime import Runtime
    from ragged.ingest import conversion
    from ragged.ingest.documents import inspect

    docs = [inspect(p) for p in paths]
    shutil.rmtree(index, ignore_errors=True)
    conversion.BATCH_FILES = batch_files  # the one knob compared here
    started = time.perf_counter()
    result = conversion.convert_documents(docs, index, Runtime())
    seconds = time.perf_counter() - started
    assert not result.problems, [p.message for p in result.problems]
    return {"seconds": seconds, "pages": result.pages, "files": result.converted, "peak": result.peak_rss_bytes,
            "workers": result.workers}


def big_docx(work: Path) -> list[object]:
    """The 200-page .docx: conversion, LibreOffice's peak against its allowance, and the page path's peak."""
    from ragged.gpu.runtime import Runtime
    from ragged.ingest import conversion
    from ragged.ingest.documents import render_pages

    path = work / "big" / "two-hundred.docx"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_long_docx(path, pages=200, label="long report")
    runtime = Runtime()
    pool = conversion.plan_pool(runtime, conversion.DEFAULT_TIMEOUT_S, 1)
    conversion.BATCH_FILES = 8
    index = work / "big-index"
    shutil.rmtree(index, ignore_errors=True)
    from ragged.ingest.documents import inspect

    started = time.perf_counter()
    result = conversion.convert_documents([inspect(path)], index, runtime)
    seconds = time.perf_counter() - started
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    rendered = sum(1 for _ in render_pages(result.ready[0], 150, fit=lambda w, h: (448, 448)))
    render_s = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return [f"{result.pages}", f"{seconds:.1f}", f"{result.pages / seconds:.1f}", mib(result.peak_rss_bytes),
            mib(pool.limits.memory_bytes), f"{rendered} in {render_s:.1f} s", f"{mib(before)} -> {mib(after)}"]


def renderers(work: Path) -> list[list[object]]:
    """LibreOffice against headless Chromium for one .html, .md and .txt file each."""
    from ragged.gpu.runtime import Runtime
    from ragged.ingest import conversion
    from ragged.ingest.convert import markdown_html
    from ragged.ingest.documents import inspect, page_texts

    folder = work / "web"
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for suffix in (".html", ".md", ".txt"):
        path = folder / f"sample{suffix}"
        KINDS[suffix](path, "phrase on the second page")
        files.append(path)
    rows: list[list[object]] = []
    conversion.BATCH_FILES = 8
    for path in files:
        index = work / f"web-index-{path.suffix[1:]}"
        shutil.rmtree(index, ignore_errors=True)
        started = time.perf_counter()
        result = conversion.convert_documents([inspect(path)], index, Runtime())
        seconds = time.perf_counter() - started
        texts = page_texts(result.ready[0])
        rows.append([path.suffix, "LibreOffice", f"{seconds:.2f}", result.pages,
                     "yes" if any("second page" in " ".join(t.split()) for t in texts) else "no"])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        rows.append(["-", "Chromium", "not installed", "-", "-"])
        return rows
    import pypdfium2 as pdfium

    for path in files:
        source = path
        if path.suffix == ".md":
            source = folder / "sample-md.html"
            source.write_text(markdown_html(path.read_text(), "sample"), encoding="utf-8")
        out = folder / f"chromium-{path.suffix[1:]}.pdf"
        profile = Path(tempfile.mkdtemp(prefix="chromium-"))
        started = time.perf_counter()
        subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        "--proxy-server=127.0.0.1:9", f"--user-data-dir={profile}", "--no-pdf-header-footer",
                        f"--print-to-pdf={out}", source.resolve().as_uri()],
                       capture_output=True, timeout=120, check=False)
        seconds = time.perf_counter() - started
        shutil.rmtree(profile, ignore_errors=True)
        if not out.is_file():
            rows.append([path.suffix, "Chromium", "failed", "-", "-"])
            continue
        pdf = pdfium.PdfDocument(str(out))
        texts = [pdf[i].get_textpage().get_text_range() for i in range(len(pdf))]
        rows.append([path.suffix, "Chromium", f"{seconds:.2f}", len(pdf),
                     "yes" if any("second page" in " ".join(t.split()) for t in texts) else "no"])
        pdf.close()
    return rows


def mcp_latency(work: Path, searches: int) -> list[list[object]]:
    """Warm MCP search round trips over stdio, through a running server and in the MCP process, the two
    sessions open side by side and asked in turn (so both see the same load on a shared machine)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    from tests.serve.conftest import Server

    cache = os.environ.get("RAGGED_CACHE_DIR") or str(work / "models")
    env = ragged_env(cache)
    index = work / "demo-index"
    if not index.exists():
        docs = work / "demo-docs"
        shutil.copytree(EXAMPLES, docs, ignore=shutil.ignore_patterns("*.py"), dirs_exist_ok=True)
        subprocess.run([sys.executable, "-m", "ragged", "ingest", str(docs), "--model", "tiny-colpali", "--index",
                        str(index)], env=env, check=True, capture_output=True, timeout=900)
    queries = ["quarterly revenue", "lemon tart", "monthly rent deposit", "operating margin", "butter and sugar"]

    def params(*args: str) -> StdioServerParameters:
        return StdioServerParameters(command=sys.executable, args=["-m", "ragged", "mcp", "--index", str(index),
                                                                   *args], env=env)

    async def both() -> list[list[object]]:
        rows: list[list[object]] = []
        async with Client(params()) as served, Client(params("--local")) as local:
            for mode in ("hybrid", "keyword"):  # keyword: no model at all, so what is left is MCP and HTTP
                times: dict[str, list[float]] = {}
                for client in (served, local):
                    await client.call_tool("search", {"query": "warm up", "k": 5, "mode": mode})
                for n in range(searches):
                    for client in (served, local):
                        started = time.perf_counter()
                        answer = await client.call_tool("search", {"query": queries[n % len(queries)], "k": 5,
                                                                   "mode": mode})
                        elapsed = time.perf_counter() - started
                        assert not answer.is_error, answer.content
                        via = str((answer.structured_content or {}).get("via", "?")).split(" at ")[0]
                        times.setdefault(via, []).append(elapsed)
                for via, values in times.items():
                    rows.append([via, mode, len(values), ms(statistics.median(values)), ms(percentile(values, 95)),
                                 f"{os.getloadavg()[0]:.1f}"])
        return rows

    server = Server(index, Path(cache), "--idle-unload", "0")
    try:
        server.wait_ready()
        return asyncio.run(both())
    finally:
        server.stop()


def percentile(values: list[float], q: int) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.0f}"


def mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=48, help="documents in the mixed corpus")
    parser.add_argument("--only-mcp", action="store_true", help="measure MCP search latency only")
    parser.add_argument("--searches", type=int, default=20, help="timed MCP searches per way")
    parser.add_argument("--workdir", type=Path, default=None, help="keep inputs and indexes here")
    args = parser.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ragged-documents-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"load average at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")

    if args.only_mcp:
        print("\nMCP search over stdio, warm (k=5, demo index, tiny-colpali and all-MiniLM-L6-v2)")
        print_table(["via", "mode", "searches", "p50 ms", "p95 ms", "load average after"],
                    mcp_latency(work, args.searches))
        return
    paths = write_corpus(work / "corpus", args.files)
    rows = []
    for label, batch in (("batches of 8 (ragged)", 8), ("one file per process", 1)):
        got = convert(paths, work / f"corpus-index-{batch}", batch)
        rows.append([label, got["workers"], got["files"], got["pages"], f"{got['seconds']:.1f}",
                     f"{got['pages'] / got['seconds']:.1f}", f"{got['files'] / got['seconds']:.2f}",
                     mib(got["peak"])])
    print("\nConversion of a mixed corpus")
    print_table(["how", "processes", "files", "pages", "seconds", "pages/s", "files/s", "peak LibreOffice"], rows)

    print("\nA 200-page .docx")
    print_table(["pages", "convert s", "pages/s", "peak LibreOffice", "allowed one converter",
                 "pages rendered (150 dpi, fit 448)", "this process's peak RSS"], [big_docx(work)])

    print("\nRenderer for .html, .md and .txt (one file each, a page break before the phrase)")
    print_table(["kind", "renderer", "seconds", "pages", "phrase in the text layer"], renderers(work))

    print("\nMCP search over stdio, warm (k=5, demo index, tiny-colpali and all-MiniLM-L6-v2)")
    print_table(["via", "mode", "searches", "p50 ms", "p95 ms", "load average after"],
                mcp_latency(work, args.searches))
    if args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
