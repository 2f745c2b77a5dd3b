"""The ``ragged`` command: a thin shell over the library.

Every :class:`~ragged.errors.RaggedError` ends as one ``error:`` line and
exit status 1 (usage mistakes: 2); tracebacks only with ``--verbose``.
Heavy libraries (torch, transformers, LanceDB) are imported inside the
commands that need them, so ``ragged --help`` starts at once.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from loguru import logger

from ragged import __version__
from ragged.cli.assistant import mcp
from ragged.cli.gpu import gpu
from ragged.cli.options import device_option, index_option, memory_target_option, policy
from ragged.cli.output import err, fail, gib, out, plain, print_error, printable, safe
from ragged.cli.serve import serve
from ragged.config import setting
from ragged.errors import RaggedError
from ragged.paths import cache_dir

_KEEPS_COMMITS = {"ingest", "remove"}


class RaggedGroup(click.Group):
    """Turns ragged's errors into one-line messages at the boundary."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except RaggedError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            fail(str(exc))
        except KeyboardInterrupt:
            command = ctx.invoked_subcommand or ""
            kept = "; every document committed so far is kept" if command in _KEEPS_COMMITS else ""
            err.print(f"interrupted{kept}.")
            sys.exit(130)


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    # No frame locals (diagnose) and no frames above the catch (backtrace): a traceback must never print a
    # token, a request body or a document's text held in a variable.
    logger.add(lambda m: err.print(printable(m.rstrip("\n")), markup=False), level="DEBUG" if verbose else "WARNING",
               format="{level}: {message}", colorize=False, diagnose=False, backtrace=False)
    if not verbose:  # the hub's own retry warnings would come before ragged's one-line error
        os.environ.setdefault("HF_HUB_VERBOSITY", "error")  # read when huggingface_hub is imported
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)  # in case it already was
    # Pillow warns (two raw lines) about an image over its pixel limit as it opens it; ragged's own, lower,
    # limit then refuses that image with a one-line error that says what to do.
    warnings.filterwarnings("ignore", message=r"Image size \(\d+ pixels\) exceeds limit")


@click.group(cls=RaggedGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log details, and show tracebacks on errors.")
@click.version_option(__version__, prog_name="ragged")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Private, local search over document pages seen as images (ColPali family).

    Settings come from flags, then RAGGED_* environment variables, then the
    config file (RAGGED_CONFIG or config.toml in the user config folder).
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)


@cli.command(short_help="Embed PDFs and images into the index.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@click.option("--model", envvar="RAGGED_MODEL", show_envvar=True, default=None,
              help="Hub id, local folder or tiny preset. Default: the index's model, else the config's, "
                   "else vidore/colpali-v1.3-hf.")
@device_option
@click.option("--batch-size", type=click.IntRange(min=1), envvar="RAGGED_BATCH_SIZE", show_envvar=True,
              default=lambda: setting("batch_size"), help="Largest batch (adaptive batching stays on).")
@click.option("--dpi", type=click.IntRange(36, 600), envvar="RAGGED_DPI", show_envvar=True,
              default=lambda: setting("dpi", 150), help="PDF rendering resolution.")
@click.option("--prune", is_flag=True, help="Also remove stored documents whose files are gone under PATHS.")
@click.option("--text-model", envvar="RAGGED_TEXT_MODEL", show_envvar=True, default=None,
              help="Sentence-embedding model for page text (sentence-transformers id or folder), or 'none'. "
                   "Default: the index's, else the config's, else all-MiniLM-L6-v2.")
@click.option("--workers", default=None, metavar="N|auto",
              help="Embed on Ray workers: N of them, or auto (one per GPU; one on a CPU-only machine).")
@click.option("--ray-address", default=None, help="Join this Ray cluster instead of starting a local one.")
@click.option("--convert-timeout", type=click.FloatRange(min=1), envvar="RAGGED_CONVERT_TIMEOUT", show_envvar=True,
              default=120.0, help="Seconds LibreOffice may take over one Office, web or text file.")
@memory_target_option
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.pass_context
def ingest(ctx: click.Context, paths: Sequence[Path], model: str | None, device: str, batch_size: int | None,
           dpi: int, prune: bool, text_model: str | None, workers: str | None, ray_address: str | None,
           convert_timeout: float, memory_target: float, index_dir: Path, as_json: bool) -> None:
    """Embed documents (files or folders) into the index: PDFs, images, and
    Office, HTML, Markdown and text files (converted by LibreOffice).

    Unchanged files are skipped, changed ones replaced, moved ones re-pathed."""
    from ragged.cli.progress import IngestProgress
    from ragged.embeddings.hf import silence_transformers
    from ragged.embeddings.loading import resolve_model
    from ragged.embeddings.names import DEFAULT_MODEL
    from ragged.gpu.runtime import Runtime
    from ragged.index.store import IndexStore
    from ragged.ingest.pipeline import IngestOptions
    from ragged.ingest.pipeline import ingest as run_ingest
    from ragged.text.model import DEFAULT_TEXT_MODEL

    scale = _scale(workers, ray_address)  # Ray missing: say so before any work
    meta = IndexStore.read_meta(index_dir)
    chosen = model or (meta.model if meta else None) or setting("model") or DEFAULT_MODEL
    # The text model as the vision model: the flag, else the index's, else the config's, else the default.
    stored_text = meta.text_model if meta else None
    configured_text = setting("text_model")
    silence_transformers()
    with Runtime(policy=policy(memory_target)) as runtime:
        runtime.device(device)  # a bad --device fails before any work
        resolve_model(chosen, cache_dir())
        options = IngestOptions(index_dir=index_dir, model=chosen, device=device, batch_size=batch_size, dpi=dpi,
                                cache_dir=cache_dir(), prune=prune, policy=runtime.policy,
                                text_model=text_model or stored_text or configured_text or DEFAULT_TEXT_MODEL,
                                text_model_explicit=text_model is not None or (stored_text is None
                                                                               and configured_text is not None),
                                scale=scale, convert_timeout_s=convert_timeout)
        with IngestProgress(err, enabled=not as_json) as progress:
            report = run_ingest([p.expanduser() for p in paths], options, progress.callbacks(), runtime)
    for problem in report.problems:
        print_error(problem.message)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        from ragged.cli.report import print_ingest_report

        print_ingest_report(out, report, verbose=bool(ctx.obj and ctx.obj.get("verbose")))
    if report.failed:
        sys.exit(1)


def _scale(workers: str | None, address: str | None) -> Any:
    """The distributed settings of --workers and --ray-address (None: this process)."""
    if workers is None and address is None:
        return None
    from ragged.errors import ConfigurationError
    from ragged.ingest.cluster import check_address, check_reachable, require_ray
    from ragged.ingest.distributed import ScaleOptions

    count: int | None = None
    if workers not in (None, "auto"):
        if not str(workers).isdigit() or int(str(workers)) < 1:
            raise ConfigurationError(f"--workers takes a whole number of at least 1, or auto (got {workers!r}).")
        count = int(str(workers))
    if address is not None:
        check_address(address)  # malformed: said before Ray is imported
    require_ray()
    if address is not None:
        check_reachable(address)  # nothing there: said in seconds, before any work
    return ScaleOptions(workers=count, address=address)


@cli.command(short_help="Find the pages that best answer QUERY.")
@click.argument("query")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1, max=1000), default=10, help="How many pages to return.")
@index_option
@device_option
@click.option("--model", default=None, help="Refuse to search unless the index was built by this model.")
@memory_target_option
@click.option("--server", default=None, help="Search through this running 'ragged serve' (URL). Default: the "
                                             "index's own server if one runs, else in this process.")
@click.option("--token", envvar="RAGGED_TOKEN", show_envvar=True, default=None, help="The server's token.")
@click.option("--local", is_flag=True, help="Search in this process even if a server runs.")
@click.option("--mode", type=click.Choice(["auto", "vision", "text", "keyword", "hybrid"]), default="auto",
              help="Rank by page images, page text, keywords, or all three fused; auto: hybrid where the index "
                   "has text, else vision.")
@click.option("--exact", is_flag=True, help="Score every page's images (a full scan) instead of the candidate "
                                            "stage's pages: slower on large indexes, for checking.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search(query: str, k: int, index_dir: Path, device: str, model: str | None, memory_target: float,
           server: str | None, token: str | None, local: bool, mode: str, exact: bool, as_json: bool) -> None:
    """Find the pages that best answer QUERY: by their images (MaxSim), text, keywords, or all fused."""
    from ragged.index.results import clean_query
    from ragged.serve.client import find_server

    text, repaired = clean_query(query)
    if repaired:
        err.print(f"note: {safe(repaired)}", soft_wrap=True)
    url = server or (None if local else find_server(index_dir))
    if url is not None:
        result = _remote_search(url, text, k, token, model, mode, exact)
    else:
        from ragged.embeddings.hf import silence_transformers
        from ragged.gpu.runtime import Runtime
        from ragged.query.searcher import search as run_search

        silence_transformers()
        with Runtime(policy=policy(memory_target)) as runtime:
            runtime.device(device)  # a bad --device fails before the index is opened
            result = run_search(text, index_dir, k=k, device=device, model=model, cache_dir=cache_dir(),
                                mode=mode, runtime=runtime, exact=exact)
    for notice in result.notices:
        err.print(f"note: {safe(notice)}", soft_wrap=True)
    if as_json:
        out.print_json(json.dumps(result.to_dict()))
        return
    shown = result.query if len(result.query) <= 80 else result.query[:77] + "..."
    scored = result.pages_scored
    exactly = f", {scored} scored exactly" if scored is not None and scored < result.pages_searched else ""
    header = (f"{shown!r}: {len(result.hits)} of {result.pages_searched} pages "
              f"({result.mode}{exactly}; {result.answered_by}, {result.device}, {result.seconds:.2f} s)")
    from ragged.cli.hits import hits_table, no_hits_advice

    if not result.hits:
        out.print(plain(f"{header}. {no_hits_advice(result.mode, result.pages_searched)}"), soft_wrap=True)
        return
    out.print(hits_table(result, header, out.width))


def _remote_search(url: str, query: str, k: int, token: str | None, model: str | None, mode: str,
                   exact: bool = False) -> Any:
    """A SearchResult from a running server (same output as in-process)."""
    from ragged.embeddings.names import stored_name
    from ragged.errors import ModelMismatchError
    from ragged.serve.client import parse_result, remote_search

    data = remote_search(url, query, k, token, mode=mode, exact=exact)
    result = parse_result(data, url)
    if model is not None and stored_name(model) != result.model:
        raise ModelMismatchError(f"The index served at {url} was built with {result.model!r}, not {model!r}.")
    return result


@cli.command("list", short_help="The documents in the index, and files gone.")
@index_option
@click.option("--missing", is_flag=True, help="Only documents whose files no longer exist.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_documents(index_dir: Path, missing: bool, as_json: bool) -> None:
    """The documents in the index, their pages, and files that are gone."""
    from rich.table import Table

    from ragged.index.store import IndexStore

    store = IndexStore.open(index_dir)
    assert store.meta is not None
    docs = store.documents()
    rows = [(d, d.exists) for d in docs]
    gone = sum(not e for _, e in rows)
    shown = [(d, e) for d, e in rows if not (missing and e)]
    if as_json:
        out.print_json(json.dumps({
            "index": str(index_dir), "model": store.meta.model, "format": store.meta.format,
            "documents": len(docs), "pages": sum(d.pages for d in docs), "missing": gone,
            "items": [{"path": d.path, "pages": d.pages, "doc_hash": d.doc_hash, "exists": e} for d, e in shown],
        }))
        return
    summary = (f"{safe(index_dir)}: {len(docs)} document(s), {sum(d.pages for d in docs)} page(s), "
               f"model {safe(store.meta.model)}")
    out.print(summary + (f"; [yellow]{gone} file(s) no longer exist[/] (ragged ingest --prune removes them)"
                         if gone else ""), soft_wrap=True)
    if not shown:
        return
    table = Table(show_edge=False)
    for column in ("file", "pages", "status"):
        table.add_column(column)
    for d, e in shown:
        table.add_row(plain(d.path), str(d.pages), "" if e else "[yellow]missing[/]")
    out.print(table)


@cli.command(short_help="Remove documents or folders from the index.")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
@index_option
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def remove(paths: Sequence[Path], index_dir: Path, as_json: bool) -> None:
    """Remove documents (files, or every document under folders) from the index."""
    from ragged.index.store import IndexStore
    from ragged.ingest.changes import stored_under
    from ragged.ingest.conversion import sweep

    meta = IndexStore.read_meta(index_dir)
    if meta is None:
        fail(f"No index at {index_dir}: nothing to remove.")
        return
    with IndexStore.open_for_writing(index_dir, meta.model) as store:
        found, unmatched = stored_under(store.documents(), [p.expanduser() for p in paths])
        pages = store.remove_documents([d.doc_hash for d in found])
        sweep(index_dir, store.known_hashes())  # the converted PDFs of documents removed
    for path in unmatched:
        print_error(f"{path}: not in the index; see 'ragged list'.")
    if as_json:
        out.print_json(json.dumps({"removed": [d.path for d in found], "pages": pages,
                                   "not_found": [str(p) for p in unmatched]}))
    else:
        out.print(f"removed {len(found)} document(s), {pages} page(s) from {safe(index_dir)}.", soft_wrap=True)
    if not found:
        sys.exit(1)


cli.add_command(gpu)
cli.add_command(serve)
cli.add_command(mcp)


def run() -> None:
    """Run the command line (Ctrl-C at any point ends it quietly)."""
    try:
        cli(prog_name="ragged")
    except KeyboardInterrupt:
        err.print("interrupted.")
        sys.exit(130)


__all__ = ["cli", "gib", "run"]
