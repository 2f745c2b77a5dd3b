"""The LangChain retriever, with langchain-core, and the excerpts assistants see."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from ragged.index.store import IndexStore
from ragged.integrations.backend import excerpt

langchain_core = pytest.importorskip("langchain_core")


@pytest.fixture(scope="module")
def retriever(integration_index: Path, model_cache: Path) -> Iterator[object]:
    from ragged.integrations.langchain import RaggedRetriever

    os_env = pytest.MonkeyPatch()
    os_env.setenv("RAGGED_CACHE_DIR", str(model_cache))
    with RaggedRetriever(index=integration_index, k=2, local=True) as opened:
        yield opened
    os_env.undo()


@pytest.mark.slow
def test_documents_carry_the_page_text_and_metadata(retriever: object, integration_index: Path) -> None:
    from langchain_core.documents import Document

    docs = retriever.invoke("quarterly revenue")  # type: ignore[attr-defined]
    assert len(docs) == 2 and all(isinstance(d, Document) for d in docs)
    top = docs[0]
    assert Path(top.metadata["path"]).name == "annual-report.pdf" and top.metadata["page"] == 1
    assert top.metadata["source"] == top.metadata["path"] and top.metadata["mode"] == "hybrid"
    assert top.metadata["score"] > 0 and "keyword" in top.metadata["signals"]
    stored = IndexStore.open(integration_index).page_texts([(top.metadata["doc_hash"], 1)])
    assert top.page_content == stored[(top.metadata["doc_hash"], 1)] and "Quarterly revenue" in top.page_content


@pytest.mark.slow
def test_a_mode_and_k_of_its_own(integration_index: Path, model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ragged.integrations.langchain import RaggedRetriever

    monkeypatch.setenv("RAGGED_CACHE_DIR", str(model_cache))
    with RaggedRetriever(index=integration_index, k=1, mode="keyword", local=True) as retriever:
        (doc,) = retriever.invoke("Okafor")
    assert (Path(doc.metadata["path"]).name, doc.metadata["page"]) == ("rental-contract.pdf", 1)
    assert list(doc.metadata["signals"]) == ["keyword"]


def test_page_texts_reads_only_the_pages_asked_for(integration_index: Path) -> None:
    store = IndexStore.open(integration_index)
    pages = store.catalog().pages
    asked = [(pages[0].doc_hash, pages[0].page), (pages[0].doc_hash, 99)]
    texts = store.page_texts(asked)
    assert list(texts) == [(pages[0].doc_hash, pages[0].page)] and texts[asked[0]]
    assert store.page_texts([]) == {}


def test_excerpt_is_cut_around_the_first_query_word() -> None:
    text = " ".join(f"word{i}" for i in range(400)) + " the harbour basalt columns " + "tail " * 300
    cut = excerpt(text, "basalt columns", chars=120)
    assert "basalt columns" in cut and cut.startswith("...") and cut.endswith("...")
    assert len(cut) <= 126 and "  " not in cut
    assert excerpt("short\n\ntext", "x") == "short text"
    assert excerpt(text, "absent", chars=50).startswith("word0 ")
