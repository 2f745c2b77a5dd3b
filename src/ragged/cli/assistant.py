"""``ragged mcp``: the index offered to assistants over the Model Context Protocol."""

from __future__ import annotations

from pathlib import Path

import click

from ragged.cli.options import device_option, index_option, memory_target_option, policy
from ragged.cli.output import fail


@click.command("mcp", short_help="Serve the index to an assistant over MCP (stdio).")
@index_option
@device_option
@memory_target_option
@click.option("--server", default=None, help="Search through this running 'ragged serve' (URL). Default: the "
                                             "index's own server if one runs, else in this process.")
@click.option("--token", envvar="RAGGED_TOKEN", show_envvar=True, default=None, help="The server's token.")
@click.option("--local", is_flag=True, help="Search in this process even if a server runs.")
def mcp(index_dir: Path, device: str, memory_target: float, server: str | None, token: str | None,
        local: bool) -> None:
    """Serve the index to an assistant over MCP (stdio): a search tool and page images.

    Point a desktop assistant or an editor at 'ragged mcp --index PATH'. It
    uses the index's running 'ragged serve' when there is one (instant
    answers), else searches in this process with the models kept loaded."""
    from ragged.index.store import IndexStore
    from ragged.paths import cache_dir
    from ragged.serve.client import check_url

    if server is not None:
        check_url(server)
    elif IndexStore.read_meta(index_dir) is None:
        fail(f"No index at {index_dir}: run 'ragged ingest' first, or pass --index.")
    from ragged.integrations.backend import IndexClient
    from ragged.integrations.mcp import serve_stdio

    with IndexClient(index_dir, server=server, token=token, local=local, device=device,
                     policy=policy(memory_target), cache_dir=cache_dir()) as client:
        serve_stdio(client)
