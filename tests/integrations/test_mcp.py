"""``ragged mcp`` end to end with the MCP SDK's own client over stdio: in
this process, and through a running ``ragged serve``."""

from __future__ import annotations

import asyncio
import base64
import io
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.client.stdio import StdioServerParameters
from PIL import Image

from ragged.index.store import IndexStore
from ragged.integrations.backend import excerpt
from tests.serve.conftest import Server, http

pytestmark = pytest.mark.slow


def run_client(index: Path, model_cache: Path, *args: str,
               body: Callable[[Client], Awaitable[dict[str, Any]]]) -> dict[str, Any]:
    """What ``body`` gathers from a session with ``ragged mcp --index INDEX ARGS``."""
    env = {**os.environ, "RAGGED_CACHE_DIR": str(model_cache), "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}
    params = StdioServerParameters(command=sys.executable, args=["-m", "ragged", "mcp", "--index", str(index), *args],
                                   env=env)

    async def session() -> dict[str, Any]:
        async with Client(params) as client:
            return await asyncio.wait_for(body(client), timeout=240)

    return asyncio.run(session())


async def tour(client: Client) -> dict[str, Any]:
    """Every tool and the page resource, and one bad call."""
    tools = {t.name for t in (await client.list_tools()).tools}
    found = await client.call_tool("search", {"query": "quarterly revenue", "k": 3})
    keyword = await client.call_tool("search", {"query": "Okafor", "k": 1, "mode": "keyword"})
    first = found.structured_content["hits"][0] if found.structured_content else {}
    image = await client.call_tool("page_image", {"doc_hash": first.get("doc_hash", ""), "page": 1, "width": 300})
    resource = await client.read_resource(first.get("image", "ragged://page/none/1"))
    empty = await client.call_tool("search", {"query": "   "})
    return {"tools": tools, "found": found, "keyword": keyword, "image": image, "resource": resource, "empty": empty}


def check_tour(seen: dict[str, Any], index: Path, via: str) -> None:
    assert {"search", "page_image"} <= seen["tools"]
    found = seen["found"]
    assert not found.is_error, found.content
    answer = found.structured_content
    assert answer["via"] == via and answer["mode"] == "hybrid" and len(answer["hits"]) == 3
    top = answer["hits"][0]
    assert Path(top["path"]).name == "annual-report.pdf" and top["page"] == 1
    assert set(top["found_by"]) <= {"vision", "text", "keyword"} and "keyword" in top["found_by"]
    stored = IndexStore.open(index).page_texts([(top["doc_hash"], 1)])[(top["doc_hash"], 1)]
    assert top["excerpt"] == excerpt(stored, "quarterly revenue") and "Quarterly revenue" in top["excerpt"]
    keyword = seen["keyword"].structured_content["hits"]
    assert [(Path(h["path"]).name, h["page"]) for h in keyword] == [("rental-contract.pdf", 1)]
    pictures = [c for c in seen["image"].content if c.type == "image"]
    assert len(pictures) == 1 and pictures[0].mime_type == "image/png"
    assert Image.open(io.BytesIO(base64.b64decode(pictures[0].data))).width == 320  # the cached width at or above
    blob = seen["resource"].contents[0]
    assert blob.mime_type == "image/png" and base64.b64decode(blob.blob).startswith(b"\x89PNG")
    assert seen["empty"].is_error and "Empty query" in seen["empty"].content[0].text


def test_mcp_searches_in_process_then_through_a_server_started_later(integration_index: Path,
                                                                      model_cache: Path) -> None:
    started: list[Server] = []

    async def both(client: Client) -> dict[str, Any]:
        local = await tour(client)
        started.append(Server(integration_index, model_cache, "--idle-unload", "0"))
        await asyncio.to_thread(started[0].wait_ready)
        return {"local": local, "served": await tour(client)}  # the same session: the server is found per call

    try:
        seen = run_client(integration_index, model_cache, body=both)
        server = started[0]
        check_tour(seen["local"], integration_index, "this process")
        check_tour(seen["served"], integration_index, f"server at {server.url}")
        local_hits = [(h["path"], h["page"]) for h in seen["local"]["found"].structured_content["hits"]]
        assert [(h["path"], h["page"]) for h in seen["served"]["found"].structured_content["hits"]] == local_hits
        status, plain = http(server.url + "/search", {"query": "Okafor", "k": 1, "mode": "keyword"})
        assert status == 200 and "text" not in plain["hits"][0]  # the text comes only when asked for
        status, with_text = http(server.url + "/search", {"query": "Okafor", "k": 1, "mode": "keyword",
                                                          "text": True})
        assert status == 200 and "Okafor" in with_text["hits"][0]["text"]
        status, refused = http(server.url + "/search", {"query": "Okafor", "text": "yes"})
        assert status == 400 and "'text' must be true or false" in refused["error"]
    finally:
        for running in started:
            running.stop()


def test_mcp_refuses_a_missing_index(tmp_path: Path, model_cache: Path) -> None:
    import subprocess

    result = subprocess.run([sys.executable, "-m", "ragged", "mcp", "--index", str(tmp_path / "none")],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1 and "No index at" in result.stderr and "Traceback" not in result.stderr
