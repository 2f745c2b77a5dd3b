"""A LangChain retriever over a ragged index (``pip install "ragged[langchain]"``).

Each document it returns is one page: ``page_content`` is the page's text,
``metadata`` holds ``source`` and ``path`` (the original file), ``page``
(1-based), ``score``, ``signals`` (which signals found it, name -> rank),
``doc_hash`` and ``mode``::

    from ragged.integrations.langchain import RaggedRetriever

    retriever = RaggedRetriever(index="~/.local/share/ragged/index", k=4)
    for doc in retriever.invoke("which paper reports the ablation on patch size?"):
        print(doc.metadata["path"], doc.metadata["page"], doc.page_content[:80])

Searches go through the index's running ``ragged serve`` when there is one,
else run in this process with the models loaded once and kept (close the
retriever, or use it in ``with``, to release them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import Field, PrivateAttr

from ragged.integrations.backend import IndexClient


class RaggedRetriever(BaseRetriever):
    """Pages of a ragged index as LangChain documents."""

    index: Path = Field(description="The index folder ('ragged ingest --index').")
    k: int = Field(default=4, ge=1, le=1000, description="Pages per query.")
    mode: str = Field(default="auto", description="auto, hybrid, vision, text or keyword.")
    server: str | None = Field(default=None, description="A running 'ragged serve' (URL); default: the index's own.")
    token: str | None = Field(default=None, description="The server's token.")
    local: bool = Field(default=False, description="Search in this process even if a server runs.")
    device: str | None = Field(default=None, description="Where in-process search runs (auto when None).")
    _client: IndexClient | None = PrivateAttr(default=None)

    def _backend(self) -> IndexClient:
        if self._client is None:
            self._client = IndexClient(Path(self.index), server=self.server, token=self.token, local=self.local,
                                       device=self.device)
        return self._client

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        found = self._backend().search(query, k=self.k, mode=self.mode)
        return [Document(page_content=hit.text,
                         metadata={"source": hit.path, "path": hit.path, "page": hit.page, "score": hit.score,
                                   "signals": dict(hit.signals), "doc_hash": hit.doc_hash, "mode": found.mode})
                for hit in found.hits]

    def close(self) -> None:
        """Release the models of in-process search."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> RaggedRetriever:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


__all__ = ["RaggedRetriever"]
