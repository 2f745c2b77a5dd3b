"""``ragged mcp``: an index offered to assistants over the Model Context Protocol.

Speaks MCP over stdio (the ``mcp`` SDK's :class:`MCPServer`) with:

* a ``search`` tool: query, k and mode in; pages out, each with its path,
  page number, score, the signals that found it (name -> rank), an excerpt
  of its text, and the URI of its image;
* a ``page_image`` tool that returns a page as a PNG image result, and the
  same image as the resource ``ragged://page/{doc_hash}/{page}``.

Searches go through the index's running ``ragged serve`` when there is
one, else run in this process (see :class:`~ragged.integrations.backend.IndexClient`).
ragged's one-line errors reach the assistant as tool errors.
"""

from __future__ import annotations

from typing import Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.utilities.types import Image
from typing_extensions import TypedDict  # pydantic needs this one on Python < 3.12

from ragged import __version__
from ragged.errors import RaggedError
from ragged.integrations.backend import IndexClient, excerpt

MAX_K = 50
Mode = Literal["auto", "hybrid", "vision", "text", "keyword"]
PAGE_URI = "ragged://page/{doc_hash}/{page}"


class HitOutput(TypedDict):
    """One page found, as the ``search`` tool returns it."""

    rank: int
    path: str
    page: int
    score: float
    found_by: dict[str, int]  # signal -> its rank of this page
    excerpt: str
    doc_hash: str
    image: str  # the page image's resource URI


class SearchOutput(TypedDict):
    """What the ``search`` tool returns."""

    query: str
    mode: str
    model: str
    via: str
    seconds: float
    hits: list[HitOutput]
    notices: list[str]


def build_server(client: IndexClient) -> MCPServer:
    """The MCP server over ``client`` (not yet running)."""
    app: MCPServer = MCPServer(
        "ragged", version=__version__, log_level="WARNING",
        instructions=(f"Searches the user's own documents (the ragged index at {client.index_dir}): PDFs, Office "
                      "files, web pages, notes and images, by their page images, text and keywords. Call `search` "
                      "with the user's question; read the excerpts; call `page_image` to see a page (tables, "
                      "figures, layout)."),
    )

    @app.tool()
    def search(query: str, k: int = 5, mode: Mode = "auto") -> SearchOutput:
        """Find the pages of the user's documents that best answer `query`. mode: auto (hybrid where the index
        has text), hybrid (image, text and keyword signals fused), vision, text or keyword. Returns each page's
        file path, page number, score, the signals that found it and an excerpt of its text."""
        if not 1 <= k <= MAX_K:
            raise ToolError(f"k must be from 1 to {MAX_K}.")
        try:
            found = client.search(query, k=k, mode=mode)
        except RaggedError as exc:
            raise ToolError(str(exc)) from None
        hits: list[HitOutput] = [
            {"rank": n, "path": h.path, "page": h.page, "score": round(h.score, 4), "found_by": dict(h.signals),
             "excerpt": excerpt(h.text, found.query), "doc_hash": h.doc_hash,
             "image": PAGE_URI.format(doc_hash=h.doc_hash, page=h.page)}
            for n, h in enumerate(found.hits, 1)]
        return {"query": found.query, "mode": found.mode, "model": found.model, "via": found.via,
                "seconds": round(found.seconds, 3), "hits": hits, "notices": found.notices}

    @app.tool()
    def page_image(doc_hash: str, page: int, width: int = 1024) -> Image:
        """The image of one page found by `search` (give its doc_hash and page), `width` pixels wide
        (160 to 2000; the nearest cached size at or above it)."""
        if not 16 <= width <= 4000:
            raise ToolError("width must be from 16 to 4000 pixels.")
        try:
            return Image(data=client.page_png(doc_hash, page, width), format="png")
        except RaggedError as exc:
            raise ToolError(str(exc)) from None

    @app.resource(PAGE_URI, name="page", mime_type="image/png",
                  description="A page of a stored document as a PNG image, 1024 pixels wide.")
    def page_resource(doc_hash: str, page: str) -> bytes:
        try:
            return client.page_png(doc_hash, int(page), 1024)
        except ValueError:
            raise ResourceError("The page must be a whole number.") from None
        except RaggedError as exc:
            raise ResourceError(str(exc)) from None

    return app


def serve_stdio(client: IndexClient) -> None:
    """Answer MCP over this process's stdin and stdout until the client goes."""
    build_server(client).run("stdio")
