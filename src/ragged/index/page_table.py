"""The page table in LanceDB: each page's text, passage vectors and metadata.

From format 3 LanceDB holds everything about a page but its image vectors
(those are in the segment files): document hash and path, page number,
vector count, model, patch grid, text and passage vectors, and the
full-text index over the text (with word positions, so quoted phrases are
searched as phrases). Rows are written before the catalog record that
makes their document visible, so rows of a document the catalog does not
list (a run killed in between) are never used, and are deleted by the next
writer.

Every commit makes a LanceDB version and, until compacted, a fragment. The
writer compacts and prunes as the run goes (:meth:`PageTable.upkeep`):
versions superseded more than :data:`RETAIN_S` ago are deleted (a reader
holds a version only while it searches, and the server looks for new
commits every 2 s), the rest are kept.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from ragged.errors import IndexStoreError
from ragged.index.files import is_disk_full, refuse_link, storage_error
from ragged.multivector.grid import PatchGrid

TABLE = "pages"
RETAIN_S = 10.0  # a version superseded this long ago is no longer read by anyone
UPKEEP_MIN_COMMITS = 64


@dataclass(frozen=True)
class PageRow:
    """One page's row: what the page table keeps of it."""

    page: int
    n_vectors: int
    grid: PatchGrid | None
    text: str | None
    text_vectors: np.ndarray | None  # (passages, text_dim) float32


@dataclass(frozen=True)
class KeywordHit:
    """A page found by full-text (BM25) search."""

    doc_hash: str
    page: int
    score: float
    text: str = ""  # the page's text, to tell how much of the query it holds


def lancedb() -> Any:
    os.environ.setdefault("LANCE_LOG", "error")  # keep Rust-side warnings off the user's terminal
    import lancedb as module

    return module


def schema(dim: int, vectors: bool = False) -> Any:
    """The table's columns (``vectors``: the image vectors, as formats 1-2 kept them)."""
    import pyarrow as pa

    fields = [
        pa.field("doc_hash", pa.string()),
        pa.field("path", pa.string()),
        pa.field("page", pa.int32()),
        pa.field("n_vectors", pa.int32()),
        pa.field("model", pa.string()),
        *([pa.field("vectors", pa.list_(pa.list_(pa.float16(), dim)))] if vectors else []),
        pa.field("grid_start", pa.int32()),
        pa.field("grid_rows", pa.int32()),
        pa.field("grid_cols", pa.int32()),
        pa.field("text", pa.string()),
        pa.field("text_vectors", pa.list_(pa.float32())),  # the page's passage vectors, flattened
    ]
    return pa.schema(fields)


def sql_string(text: str) -> str:
    """``text`` as an SQL string literal for LanceDB filters."""
    return "'" + text.replace("'", "''") + "'"


def hash_list(hashes: Sequence[str]) -> str:
    return "doc_hash IN (" + ", ".join(sql_string(h) for h in sorted(hashes)) + ")"


def flat_vectors(per_page: Sequence[np.ndarray | None]) -> Any:
    """Per page, its (passages, dim) vectors flattened (None where not embedded)."""
    import pyarrow as pa

    return pa.array([None if v is None else np.asarray(v, dtype=np.float32).reshape(-1) for v in per_page],
                    type=pa.list_(pa.float32()))


class PageTable:
    """The LanceDB table of one index folder."""

    def __init__(self, index_folder: Path) -> None:
        self.index_folder = index_folder
        self.folder = index_folder / "lancedb"
        self._db: Any = None
        self._table: Any = None
        self._versions: list[tuple[int, float]] = []  # (version, when made) of this writer's commits

    @property
    def table_folder(self) -> Path:
        return self.folder / f"{TABLE}.lance"

    @contextmanager
    def guard(self, action: str) -> Iterator[None]:
        """Translate LanceDB's and the OS's failures into one clear line."""
        try:
            yield
        except IndexStoreError:
            raise
        except Exception as exc:
            if is_disk_full(exc) or isinstance(exc, PermissionError):
                raise storage_error(exc, self.index_folder) from exc
            first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
            raise IndexStoreError(
                f"The index at {self.index_folder} is damaged: {action} failed ({first}). Restore it from a backup, "
                "or ingest into a new --index folder."
            ) from exc

    def exists(self) -> bool:
        return (self.table_folder / "_versions").is_dir()

    def table(self) -> Any:
        """The table (opened once), or None before its first commit."""
        if self._table is None:
            if not self.exists():
                return None
            refuse_link(self.folder)
            with self.guard("opening the pages table"):
                self._db = self._db or lancedb().connect(str(self.folder))
                self._table = self._db.open_table(TABLE)
        return self._table

    def at(self, version: int | None) -> Any:
        """The table as of ``version`` (the catalog snapshot's), or its newest
        where that version was pruned (callers keep only rows the snapshot lists)."""
        table = self.table()
        if table is None or version is None:
            return table
        try:
            if table.version != version:
                table.checkout(version)
        except Exception:
            table.checkout_latest()
        return table

    @property
    def version(self) -> int | None:
        table = self.table()
        return None if table is None else int(table.version)

    def _made(self) -> int:
        version = int(self._table.version)
        self._versions.append((version, time.time()))
        return version

    # -- writing ----------------------------------------------------------

    def add(self, rows: Any, dim: int) -> int:
        """Append rows (one commit); the new version."""
        with self.guard("adding pages"):
            if self.table() is None:
                self._db = self._db or lancedb().connect(str(self.folder))
                self._table = self._db.create_table(TABLE, data=rows, schema=schema(dim), exist_ok=False)
            else:
                self._table.add(rows)
        return self._made()

    def delete(self, hashes: Sequence[str]) -> int | None:
        """Delete the rows of ``hashes`` (one commit); the new version, None when there is no table."""
        if self.table() is None or not hashes:
            return self.version
        with self.guard("removing pages"):
            self._table.delete(hash_list(hashes))
        return self._made()

    def move(self, doc_hash: str, path: str) -> int:
        with self.guard("moving a document"):
            self.table().update(where=f"doc_hash = {sql_string(doc_hash)}", values={"path": path})
        return self._made()

    def set_text(self, rows: Any) -> int:
        with self.guard("storing page text"):
            self.table().merge_insert(["doc_hash", "page"]).when_matched_update_all().execute(rows)
        return self._made()

    def doc_hashes(self) -> set[str]:
        """Every document hash with rows (for clearing what a killed run left)."""
        table = self.table()
        if table is None:
            return set()
        with self.guard("reading the page list"):
            rows = table.search().select(["doc_hash"]).limit(None).to_arrow()
        return set(rows.column("doc_hash").to_pylist())

    def models(self) -> set[str]:
        """Every model named by a row (an index holds one)."""
        table = self.table()
        if table is None or "model" not in table.schema.names:
            return set()
        with self.guard("reading the page list"):
            rows = table.search().select(["model"]).limit(None).to_arrow()
        return set(rows.column("model").to_pylist())

    def has_fts(self) -> bool:
        table = self.table()
        return table is not None and any(getattr(i, "index_type", "") == "FTS" for i in table.list_indices())

    def has_positions(self) -> bool:
        """True when the full-text index keeps word positions (phrase queries work)."""
        try:
            self._fts(self.table(), '"ragged position probe"', 1)
        except Exception as exc:
            return "position" not in str(exc).lower()
        return True

    def index_text(self, replace: bool = False) -> int:
        """Create the full-text index over page text, with word positions for phrases."""
        from lancedb.index import FTS

        with self.guard("indexing page text"):
            self.table().create_index("text", config=FTS(with_position=True), replace=replace)
        return self._made()

    def upkeep(self) -> int:
        """Compact fragments, fold new rows into the full-text index, and delete
        versions superseded more than :data:`RETAIN_S` ago; the new version."""
        table = self.table()
        with self.guard("compacting the pages table"):
            table.optimize(cleanup_older_than=self._keep_from())
        return self._made()

    def _keep_from(self) -> timedelta:
        """How old a version may be and still be kept: every version from the
        newest one made more than RETAIN_S ago (the one a slow reader may hold)."""
        now = time.time()
        known = list(self._versions)
        if not known or known[0][1] > now - RETAIN_S:
            opened = self._oldest_known()
            if opened is not None:
                known.insert(0, opened)
        settled = [made for _, made in known if made <= now - RETAIN_S]
        if not settled:  # every version known is recent: the one before may still be read
            return timedelta(days=7)
        margin = min(1.0, RETAIN_S / 10)  # timestamps are LanceDB's: keep a version made just before, too
        return timedelta(seconds=max(RETAIN_S, now - max(settled) + margin))

    def _oldest_known(self) -> tuple[int, float] | None:
        """The version the table had when this writer opened it, and when it was made (its manifest's time)."""
        versions = self.table_folder / "_versions"
        try:
            newest = max(versions.iterdir(), key=lambda p: p.stat().st_mtime)
            return 0, newest.stat().st_mtime
        except (OSError, ValueError):
            return None

    # -- reading ----------------------------------------------------------

    def keyword(self, query: str, limit: int, version: int | None) -> tuple[list[KeywordHit], list[str]]:
        """The best pages for ``query`` by BM25, and notices: a quoted phrase is
        searched as a phrase, or as words where the index lacks word positions."""
        table = self.at(version)
        if table is None or "text" not in table.schema.names or not self.has_fts():
            return [], []
        notices: list[str] = []
        try:
            rows = self._fts(table, query, limit)
        except Exception as exc:
            if not _query_problem(exc):
                with self.guard("searching page text"):
                    raise
            words = " ".join(query.replace('"', " ").split())
            notices.append(_phrase_notice(exc))
            with self.guard("searching page text"):
                rows = self._fts(table, words, limit) if words else None
        if rows is None:
            return [], notices
        hits = [KeywordHit(h, int(p), float(s), t or "") for h, p, s, t in zip(
            rows.column("doc_hash").to_pylist(), rows.column("page").to_pylist(), rows.column("_score").to_pylist(),
            rows.column("text").to_pylist(), strict=True)]
        return hits, notices

    @staticmethod
    def _fts(table: Any, query: str, limit: int) -> Any:
        return (table.search(query, query_type="fts").select(["doc_hash", "page", "_score", "text"]).limit(limit)
                .to_arrow())

    def text_rows(self, version: int | None) -> Any:
        """(doc_hash, page, text_vectors) of every page with passage vectors."""
        table = self.at(version)
        if table is None or "text_vectors" not in table.schema.names:
            return None
        with self.guard("reading text vectors"):
            return table.search().where("text_vectors IS NOT NULL").select(
                ["doc_hash", "page", "text_vectors"]).limit(None).to_arrow()

    def page_texts(self, pairs: Sequence[tuple[str, int]], version: int | None) -> dict[tuple[str, int], str]:
        """The stored text of the given (document hash, page) pairs at ``version``
        ("" where a page has none; pairs the table does not hold are left out)."""
        table = self.at(version)
        wanted = sorted({(h, int(p)) for h, p in pairs})
        if table is None or not wanted or "text" not in table.schema.names:
            return {}
        where = " OR ".join(f"(doc_hash = {sql_string(h)} AND page = {p})" for h, p in wanted)
        with self.guard("reading page text"):
            rows = table.search().where(where).select(["doc_hash", "page", "text"]).limit(None).to_arrow()
        return {(h, int(p)): t or "" for h, p, t in zip(rows.column("doc_hash").to_pylist(),
                                                         rows.column("page").to_pylist(),
                                                         rows.column("text").to_pylist(), strict=True)}

    def probe_texts(self, limit: int, version: int | None) -> list[tuple[str, int, str]]:
        """(document, page, text) of up to ``limit`` pages that have text, at ``version``."""
        table = self.at(version)
        if table is None or "text" not in table.schema.names:
            return []
        with self.guard("reading page text"):
            rows = (table.search().where("text IS NOT NULL AND text != ''").select(["doc_hash", "page", "text"])
                    .limit(limit).to_arrow())
        return list(zip(rows.column("doc_hash").to_pylist(), [int(p) for p in rows.column("page").to_pylist()],
                        rows.column("text").to_pylist(), strict=True))

    def without_text(self) -> set[str]:
        table = self.table()
        if table is None:
            return set()
        with self.guard("reading page text"):
            rows = (table.search().where("text IS NULL OR text_vectors IS NULL").select(["doc_hash"])
                    .limit(None).to_arrow())
        return set(rows.column("doc_hash").to_pylist())


def _query_problem(exc: Exception) -> bool:
    """True for a query the full-text index cannot take as written (LanceDB's
    "position is not found but required for phrase queries", a syntax error
    of its query parser), as opposed to a damaged index."""
    text = str(exc).lower()
    return "phrase" in text or "position" in text or "syntax" in text or "parse" in text


def _phrase_notice(exc: Exception) -> str:
    if "position" in str(exc).lower():
        return ("quoted phrases are searched as separate words in this index (its full-text index predates word "
                "positions; the next 'ragged ingest' rebuilds it)")
    return "the query was searched as plain words (quotes and operators ignored)"
