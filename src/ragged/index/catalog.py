"""The catalog: every stored page without its vectors, in search order.

From format 3 the catalog is the commit point of the index and lives in
``catalog/`` as a log (see :mod:`ragged.index.catalog_log`): a document is
in the index once its record is there. :class:`Catalog` is one snapshot of
it, as searches use it: pages grouped by document, and where each
document's vectors lie.

Formats 1 and 2 kept ``catalog.json``, rewritten whole at every commit with
the LanceDB table version it describes; those indexes are still read (the
file is trusted while the table's newest version, read from its
``_versions`` folder without LanceDB, is the one recorded) until the next
ingest upgrades them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from ragged.index.files import atomic_write, check_doc_id
from ragged.index.segments import Extent
from ragged.multivector.grid import PatchGrid

CATALOG = "catalog.json"
_U64_MAX = 2**64 - 1


@dataclass(frozen=True)
class PageRecord:
    """One stored page, without its vectors."""

    doc_hash: str
    path: str
    page: int  # 1-based
    n_vectors: int
    grid: PatchGrid | None = None


@dataclass(frozen=True)
class DocumentRecord:
    """One stored document."""

    doc_hash: str
    path: str
    pages: int

    @property
    def exists(self) -> bool:
        """True while the file is still where it was ingested from."""
        return Path(self.path).is_file()


@dataclass(frozen=True)
class Catalog:
    """Every stored page in search order: grouped by document, page order."""

    pages: list[PageRecord]
    documents: list[str]  # document hashes, in the order their pages appear
    extents: dict[str, tuple[Extent, ...]] = field(default_factory=dict)  # format 3: where vectors lie
    lance_version: int | None = None  # format 3: the page table's version that holds these documents' rows
    stamp: tuple[int, int] | None = None  # format 3: (log generation, log bytes) this snapshot was read at
    pooled: dict[str, tuple[Extent, ...]] = field(default_factory=dict)  # the candidate stage, where built

    @property
    def total_vectors(self) -> int:
        """Vectors over all pages."""
        return int(self.lengths.sum())

    @cached_property
    def lengths(self) -> np.ndarray:
        """(pages,) int64: each page's vector count, in catalog order."""
        return np.fromiter((p.n_vectors for p in self.pages), dtype=np.int64, count=len(self.pages))

    @cached_property
    def page_counts(self) -> dict[str, int]:
        """Pages of each document."""
        counts: dict[str, int] = dict.fromkeys(self.documents, 0)
        for page in self.pages:
            counts[page.doc_hash] += 1
        return counts

    @cached_property
    def doc_starts(self) -> np.ndarray:
        """(documents,) int64: the catalog position of each document's first page."""
        counts = np.fromiter((self.page_counts[d] for d in self.documents), dtype=np.int64, count=len(self.documents))
        return np.concatenate(([0], np.cumsum(counts)))[:-1].astype(np.int64)

    @cached_property
    def staged(self) -> np.ndarray:
        """(pages,) bool: True where a page has its pooled vectors (the candidate stage)."""
        out = np.zeros(len(self.pages), dtype=bool)
        for doc, start in zip(self.documents, self.doc_starts.tolist(), strict=True):
            if doc in self.pooled:
                out[start : start + self.page_counts[doc]] = True
        return out

    def since(self, first: int) -> Catalog:
        """The pages from catalog position ``first`` (a document's first page) on."""
        if first == 0:
            return self
        if first >= len(self.pages):
            return Catalog([], [], {}, self.lance_version, self.stamp)
        d = self.documents.index(self.pages[first].doc_hash)
        documents = self.documents[d:]
        keep = set(documents)
        return Catalog(self.pages[first:], documents, {h: e for h, e in self.extents.items() if h in keep},
                       self.lance_version, self.stamp, {h: e for h, e in self.pooled.items() if h in keep})

    def document_records(self) -> list[DocumentRecord]:
        """One record per document, in search order."""
        first: dict[str, PageRecord] = {}
        counts: dict[str, int] = {}
        for page in self.pages:
            first.setdefault(page.doc_hash, page)
            counts[page.doc_hash] = counts.get(page.doc_hash, 0) + 1
        return [DocumentRecord(h, first[h].path, counts[h]) for h in self.documents]

    @classmethod
    def from_pages(cls, records: list[PageRecord]) -> Catalog:
        """Group ``records`` by document (first appearance) in page order."""
        order: dict[str, int] = {}
        for record in records:
            check_doc_id(record.doc_hash)
            order.setdefault(record.doc_hash, len(order))
        ordered = sorted(records, key=lambda r: (order[r.doc_hash], r.page))
        return cls(ordered, list(order))

    def to_json(self, version: int) -> bytes:
        """The catalog file's contents for table version ``version``."""
        by_doc: dict[str, list[list[int]]] = {}
        for p in self.pages:
            by_doc.setdefault(p.doc_hash, []).append([p.n_vectors, *(p.grid.as_list() if p.grid else [])])
        docs = [{"hash": d.doc_hash, "path": d.path, "pages": by_doc[d.doc_hash]} for d in self.document_records()]
        return json.dumps({"version": version, "documents": docs}, separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> tuple[int, Catalog]:
        """(table version, catalog) from a catalog file; ValueError if malformed."""
        raw = json.loads(data)
        if not isinstance(raw, dict) or not isinstance(raw.get("version"), int):
            raise ValueError("not a catalog")
        pages: list[PageRecord] = []
        documents: list[str] = []
        for doc in raw["documents"]:
            doc_hash, path = check_doc_id(doc["hash"]), str(doc["path"])
            documents.append(doc_hash)
            for number, entry in enumerate(doc["pages"], 1):
                grid = PatchGrid(*map(int, entry[1:4])) if len(entry) >= 4 else None
                pages.append(PageRecord(doc_hash, path, number, int(entry[0]), grid))
        return int(raw["version"]), cls(pages, documents)


def table_version(table_folder: Path) -> int | None:
    """The newest version of a LanceDB table, read from its files (no LanceDB)."""
    versions = table_folder / "_versions"
    try:
        names = [n for n in (p.name for p in versions.iterdir()) if n.endswith(".manifest")]
    except OSError:
        return None
    numbers = [int(n.split(".")[0]) for n in names if n.split(".")[0].isdigit()]
    if not numbers:
        return None
    # Manifests are named u64::MAX - version (newest first in a listing) or by version itself.
    return max(_U64_MAX - n if n > 2**63 else n for n in numbers)


def read_catalog_file(folder: Path, version: int | None) -> Catalog | None:
    """The catalog file if it describes table ``version``, else None."""
    if version is None:
        return None
    try:
        recorded, catalog = Catalog.from_json((folder / CATALOG).read_bytes())
    except Exception:  # missing, malformed or with a damaged id: LanceDB's rows decide
        return None
    return catalog if recorded == version else None


def write_catalog_file(folder: Path, catalog: Catalog, version: int) -> None:
    """Record ``catalog`` as the contents of table ``version``."""
    data = catalog.to_json(version)
    atomic_write(folder / CATALOG, lambda fh: fh.write(data))
