"""One way into an index for assistants and frameworks (MCP, LangChain).

:class:`IndexClient` searches an index through its running ``ragged
serve`` when there is one (found and checked the way ``ragged search``
finds it), else in this process with the models loaded once and kept.
Either way a hit carries its page's text, so an assistant can read it, and
a page's image can be fetched.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.policy import MemoryPolicy
from ragged.index.results import check_query
from ragged.index.store import IndexStore
from ragged.serve.client import find_server, parse_result, remote_page_png, remote_search
from ragged.serve.pages import PageRenderer

EXCERPT_CHARS = 600
_WORD = re.compile(r"\w{3,}")


@dataclass(frozen=True)
class PageHit:
    """One page found: where it is, how it scored, which signals found it
    (name -> rank) and its text ("" when the page has none)."""

    path: str
    page: int
    score: float
    doc_hash: str
    signals: dict[str, int] = field(default_factory=dict)
    text: str = ""


@dataclass(frozen=True)
class PageSearch:
    """The pages found for one query, and how they were found."""

    query: str
    mode: str
    model: str
    via: str  # "server at URL" or "this process"
    seconds: float
    hits: list[PageHit]
    notices: list[str] = field(default_factory=list)


def excerpt(text: str, query: str, chars: int = EXCERPT_CHARS) -> str:
    """About ``chars`` characters of ``text``, around the first query word
    it holds (else from its start), whitespace folded, cuts marked with '...'."""
    flat = " ".join(text.split())
    if len(flat) <= chars:
        return flat
    lowered = flat.lower()
    found = [lowered.find(w.lower()) for w in _WORD.findall(query)]
    first = min((f for f in found if f >= 0), default=0)
    start = max(0, min(first - chars // 4, len(flat) - chars))
    if start:
        start = flat.find(" ", start) + 1 or start
    end = start + chars
    if end < len(flat):
        cut = flat.rfind(" ", start, end)
        end = cut if cut > start else end
    return ("..." if start else "") + flat[start:end] + ("..." if end < len(flat) else "")


class IndexClient:
    """Searches one index: through its server when one runs (``server``
    names one; ``local`` never uses one), else in this process. Close it,
    or use ``with``."""

    def __init__(self, index_dir: Path, *, server: str | None = None, token: str | None = None,
                 local: bool = False, device: DeviceHint = None, policy: MemoryPolicy | None = None,
                 cache_dir: Path | None = None) -> None:
        self.index_dir = index_dir.expanduser()
        self.server, self.token, self.local = server, token, local
        self.device, self.policy, self.cache_dir = device, policy, cache_dir
        self._lock = threading.Lock()  # one in-process search at a time: the models are shared
        self._searcher: Any = None
        self._renderer = PageRenderer(self.index_dir)

    def server_url(self) -> str | None:
        """The server to use now (None: search in this process)."""
        if self.server is not None:
            return self.server
        return None if self.local else find_server(self.index_dir)

    def search(self, query: str, k: int = 10, mode: str = "auto") -> PageSearch:
        """The ``k`` best pages for ``query``, each with its text."""
        text = check_query(query)
        started = time.perf_counter()
        url = self.server_url()
        if url is not None:
            data = remote_search(url, text, k, self.token, mode=mode, text=True)
            result = parse_result(data, url)
            texts = {(str(h.get("doc_hash")), int(h.get("page", 0))): str(h.get("text") or "")
                     for h in data.get("hits", []) if isinstance(h, dict)}
            via = f"server at {url}"
        else:
            with self._lock:
                searcher = self._open()
                result = searcher.search(text, k=k, mode=mode)
                texts = searcher.store.page_texts([(h.doc_hash, h.page) for h in result.hits])
            via = "this process"
        hits = [PageHit(h.path, h.page, h.score, h.doc_hash, dict(h.signals), texts.get((h.doc_hash, h.page), ""))
                for h in result.hits]
        return PageSearch(result.query, result.mode, result.model, via, time.perf_counter() - started, hits,
                          list(result.notices))

    def page_png(self, doc_hash: str, page: int, width: int = 1024) -> bytes:
        """Page ``page`` of a stored document as PNG (a converted document's
        page as converted), ``width`` pixels wide or the next cached width."""
        url = self.server_url()
        if url is not None:
            return remote_page_png(url, doc_hash, page, width, self.token)
        catalog = IndexStore.open(self.index_dir).catalog()
        return self._renderer.png(catalog, doc_hash, page, width)

    def _open(self) -> Any:
        """The in-process searcher (its models kept), following new commits."""
        if self._searcher is None:
            from ragged.query.searcher import Searcher  # the one place the in-process searcher is named

            self._searcher = Searcher(self.index_dir, device=self.device, cache_dir=self.cache_dir,
                                      policy=self.policy)
        else:
            self._searcher.refresh()  # a cheap look at the catalog's stamp; the models stay loaded
        return self._searcher

    def close(self) -> None:
        """Release the models of in-process search."""
        with self._lock:
            if self._searcher is not None:
                self._searcher.close()
                self._searcher = None

    def __enter__(self) -> IndexClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
