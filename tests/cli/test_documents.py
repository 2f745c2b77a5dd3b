"""Documents that change: edited, moved, copied, deleted; list and remove."""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest

from ragged.index.store import IndexStore
from tests.cli.conftest import Ragged
from tests.inputs import EXAMPLES


def stored(index: Path) -> Counter[tuple[str, int]]:
    return Counter((p.path, p.page) for p in IndexStore.open(index).catalog().pages)


def ingest(ragged: Ragged, *args: str) -> dict[str, object]:
    result = ragged("ingest", *args, "--model", "tiny-colpali", "--dpi", "72", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture
def docs(tmp_path: Path) -> Path:
    folder = tmp_path / "docs"
    folder.mkdir()
    for name in ("annual-report.pdf", "recipe-card.pdf"):
        shutil.copy(EXAMPLES / name, folder / name)
    return folder


def test_paths_are_absolute_wherever_ingest_ran(ragged: Ragged, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(docs.parent)
    ingest(ragged, "docs/recipe-card.pdf")
    assert set(stored(ragged.index)) == {(str(docs / "recipe-card.pdf"), 1)}


def test_an_edited_file_replaces_its_pages(ragged: Ragged, docs: Path) -> None:
    ingest(ragged, str(docs))
    report = docs / "annual-report.pdf"
    assert sum(1 for path, _ in stored(ragged.index) if path == str(report)) == 3
    shutil.copy(EXAMPLES / "rental-contract.pdf", report)  # now a 2-page document
    result = ingest(ragged, str(docs))
    assert (result["documents_replaced"], result["documents_added"], result["documents_skipped"]) == (1, 0, 1)
    pages = stored(ragged.index)
    assert sorted(n for path, n in pages if path == str(report)) == [1, 2]  # the new version only, once
    assert all(count == 1 for count in pages.values())
    reader = IndexStore.open(ragged.index)
    assert reader.pages.doc_hashes() == reader.known_hashes()  # the old version's rows went with it


def test_a_moved_file_keeps_its_vectors(ragged: Ragged, docs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ingest(ragged, str(docs))
    moved = docs / "sub" / "recipe.pdf"
    moved.parent.mkdir()
    os.replace(docs / "recipe-card.pdf", moved)

    def no_embedding(*args: object, **kwargs: object) -> None:
        raise AssertionError("a moved file must not be embedded again")

    monkeypatch.setattr("ragged.ingest.pipeline.ColPaliEmbedder", no_embedding)
    result = ingest(ragged, str(docs))
    assert (result["documents_moved"], result["documents_added"]) == (1, 0)
    assert any(str(moved) in note and "moved" in note for note in result["notes"])  # type: ignore[attr-defined]
    assert (str(moved), 1) in stored(ragged.index) and (str(docs / "recipe-card.pdf"), 1) not in stored(ragged.index)


def test_a_copy_is_not_stored_twice(ragged: Ragged, docs: Path) -> None:
    ingest(ragged, str(docs))
    shutil.copy(docs / "recipe-card.pdf", docs / "recipe-copy.pdf")
    result = ingest(ragged, str(docs))
    assert (result["duplicates"], result["documents_added"]) == (1, 0)
    assert all(path != str(docs / "recipe-copy.pdf") for path, _ in stored(ragged.index))


def test_prune_drops_documents_whose_files_are_gone(ragged: Ragged, docs: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    shutil.copy(EXAMPLES / "rental-contract.pdf", elsewhere / "contract.pdf")
    ingest(ragged, str(docs), str(elsewhere))
    (docs / "annual-report.pdf").unlink()
    (elsewhere / "contract.pdf").unlink()
    unpruned = ingest(ragged, str(docs))
    assert unpruned["documents_removed"] == 0 and len({p for p, _ in stored(ragged.index)}) == 3
    pruned = ingest(ragged, str(docs), "--prune")
    assert pruned["documents_removed"] == 1  # only under the folders given
    assert {p for p, _ in stored(ragged.index)} == {str(docs / "recipe-card.pdf"), str(elsewhere / "contract.pdf")}


def test_list_shows_documents_and_missing_files(ragged: Ragged, docs: Path) -> None:
    ingest(ragged, str(docs))
    (docs / "recipe-card.pdf").unlink()
    listing = json.loads(ragged("list", "--json").stdout)
    assert (listing["documents"], listing["pages"], listing["missing"], listing["model"]) == (2, 4, 1, "tiny-colpali")
    assert {(i["path"], i["exists"]) for i in listing["items"]} == {
        (str(docs / "annual-report.pdf"), True), (str(docs / "recipe-card.pdf"), False)}
    table = ragged("list")
    assert table.exit_code == 0 and "1 file(s) no longer exist" in table.stdout and "missing" in table.stdout
    only_missing = json.loads(ragged("list", "--missing", "--json").stdout)["items"]
    assert [i["path"] for i in only_missing] == [str(docs / "recipe-card.pdf")]


def test_remove_files_and_folders(ragged: Ragged, docs: Path, tmp_path: Path) -> None:
    ingest(ragged, str(docs))
    one = ragged("remove", str(docs / "recipe-card.pdf"), str(tmp_path / "never-ingested.pdf"), "--json")
    assert one.exit_code == 0
    assert json.loads(one.stdout)["removed"] == [str(docs / "recipe-card.pdf")]
    assert "never-ingested.pdf: not in the index" in one.stderr
    folder = ragged("remove", str(docs))
    assert folder.exit_code == 0 and "removed 1 document(s), 3 page(s)" in folder.stdout
    assert stored(ragged.index) == Counter()
    nothing = ragged("remove", str(docs))
    assert nothing.exit_code == 1 and "not in the index" in nothing.stderr


def test_remove_without_an_index(ragged: Ragged, docs: Path) -> None:
    result = ragged("remove", str(docs))
    assert result.exit_code == 1 and "No index at" in result.stderr
