"""The ``ragged`` command: a thin shell over the library.

Every :class:`~ragged.errors.RaggedError` ends as one ``error:`` line and
exit status 1 (usage mistakes: 2); tracebacks only with ``--verbose``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click
from loguru import logger

from ragged import __version__
from ragged.cli.gpu import gpu
from ragged.cli.output import err, fail, gib, out, print_error
from ragged.config import setting
from ragged.errors import RaggedError
from ragged.paths import cache_dir, default_index_dir


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
            err.print("interrupted; everything committed so far is kept.")
            sys.exit(130)


def _setup_logging(verbose: bool) -> None:
    logger.remove()
    logger.add(lambda m: err.print(m, end="", markup=False), level="DEBUG" if verbose else "WARNING",
               format="<level>{level}</level>: {message}", colorize=False)


@click.group(cls=RaggedGroup, context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("-v", "--verbose", is_flag=True, help="Log details, and show tracebacks on errors.")
@click.version_option(__version__, prog_name="ragged")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """Private, local search over PDF pages seen as images (ColPali family).

    Settings come from flags, then RAGGED_* environment variables, then the
    config file (RAGGED_CONFIG or config.toml in the user config folder).
    """
    ctx.ensure_object(dict)
    ctx.obj["verbose"] = verbose
    _setup_logging(verbose)


def _index_option(f: Any) -> Any:
    return click.option(
        "--index", "index_dir", type=click.Path(path_type=Path), envvar="RAGGED_INDEX", show_envvar=True,
        default=lambda: setting("index") or default_index_dir(), help="Index folder.",
    )(f)


def _device_option(f: Any) -> Any:
    return click.option(
        "--device", envvar="RAGGED_DEVICE", show_envvar=True, default=lambda: setting("device", "auto"),
        help="auto, cpu, mps, cuda or cuda:N.",
    )(f)


@cli.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--model", envvar="RAGGED_MODEL", show_envvar=True, default=None,
              help="Hub id, local folder or tiny preset. Default: the index's model, else the config's, "
                   "else vidore/colpali-v1.3-hf.")
@_device_option
@click.option("--batch-size", type=click.IntRange(min=1), envvar="RAGGED_BATCH_SIZE", show_envvar=True,
              default=lambda: setting("batch_size"), help="Largest batch (adaptive batching stays on).")
@click.option("--dpi", type=click.IntRange(36, 600), envvar="RAGGED_DPI", show_envvar=True,
              default=lambda: setting("dpi", 150), help="PDF rendering resolution.")
@_index_option
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def ingest(paths: Sequence[Path], model: str | None, device: str, batch_size: int | None, dpi: int,
           index_dir: Path, as_json: bool) -> None:
    """Embed PDFs and images (files or folders) into the index."""
    from ragged.cli.progress import IngestProgress
    from ragged.embeddings.loading import DEFAULT_MODEL, resolve_model
    from ragged.gpu import default_device_manager
    from ragged.index.store import IndexStore
    from ragged.ingest.pipeline import IngestOptions
    from ragged.ingest.pipeline import ingest as run_ingest

    meta = IndexStore.read_meta(index_dir)
    chosen = model or (meta.model if meta else None) or setting("model") or DEFAULT_MODEL
    default_device_manager().get_optimal_device(device)  # a bad --device fails before any work
    resolve_model(chosen, cache_dir())
    options = IngestOptions(index_dir=index_dir, model=chosen, device=device, batch_size=batch_size, dpi=dpi,
                            cache_dir=cache_dir())
    with IngestProgress(err, enabled=not as_json) as progress:
        report = run_ingest(paths, options, progress.callbacks())
    for problem in report.problems:
        print_error(problem.message)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        from ragged.cli.report import print_ingest_report

        print_ingest_report(out, report)
    if report.failed:
        sys.exit(1)


@cli.command()
@click.argument("query")
@click.option("-k", "--top-k", "k", type=click.IntRange(min=1), default=10, help="How many pages to return.")
@_index_option
@_device_option
@click.option("--model", default=None, help="Refuse to search unless the index was built by this model.")
@click.option("--json", "as_json", is_flag=True, help="Print the hits as JSON.")
def search(query: str, k: int, index_dir: Path, device: str, model: str | None, as_json: bool) -> None:
    """Find the pages that best answer QUERY (exact MaxSim)."""
    from rich.table import Table

    from ragged.gpu import default_device_manager
    from ragged.index.query import search as run_search

    default_device_manager().get_optimal_device(device)
    result = run_search(query, index_dir, k=k, device=device, model=model, cache_dir=cache_dir())
    if as_json:
        out.print_json(json.dumps({
            "query": result.query, "model": result.model, "device": result.device,
            "pages_searched": result.pages_searched, "seconds": round(result.seconds, 3),
            "hits": [{"rank": n, "path": h.path, "page": h.page, "score": round(h.score, 4)}
                     for n, h in enumerate(result.hits, 1)],
        }))
        return
    table = Table(title=f"{result.query!r}: {len(result.hits)} of {result.pages_searched} pages "
                        f"({result.model}, {result.device}, {result.seconds:.2f} s)")
    for column, justify in (("#", "right"), ("score", "right"), ("file", "left"), ("page", "right")):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for n, hit in enumerate(result.hits, 1):
        table.add_row(str(n), f"{hit.score:.3f}", hit.path, str(hit.page))
    out.print(table)


cli.add_command(gpu)


def main() -> None:
    """Console entry point."""
    cli(prog_name="ragged")


__all__ = ["cli", "gib", "main"]
