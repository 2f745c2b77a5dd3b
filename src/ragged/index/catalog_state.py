"""What the catalog log describes, and how each record changes it.

The state is rebuilt by applying the log's records in order to its last
snapshot (see :mod:`ragged.index.catalog_log`); the writer keeps it
current as it appends. Every change a record makes costs the change (a
dictionary entry or a few), never the size of the index.

==========  ====================================================================
record      effect
==========  ====================================================================
``add``     a whole document becomes visible (and the one it replaces at the
            same path goes, in the same record)
``piece``   pages of a document still being written (invisible until ``done``)
``done``    the document of those pieces becomes visible (replacing as ``add``)
``drop``    the pieces of a document that will never be finished are abandoned
``remove``  documents go
``move``    a document's path changes
``text``    documents got their text side
``purged``  the page-table rows of documents that went are deleted
``relocate`` a document's blocks moved (segment compaction), or its pooled
            vectors were written (the candidate stage built for a document
            stored before it; readers that predate the stage ignore them)
``retire``  segment files no longer read by new snapshots (deleted later)
``deleted`` retired files are gone
``lance``   the page table's version after upkeep
==========  ====================================================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ragged.index.catalog import Catalog, PageRecord
from ragged.index.files import check_doc_id
from ragged.index.segments import Extent
from ragged.multivector.grid import PatchGrid


@dataclass
class DocEntry:
    """One document: its path, pages (vectors and grid each), blocks, pooled
    blocks (the candidate stage; empty where not built yet) and text side."""

    path: str
    doc_pages: int
    pages: list[tuple[int, PatchGrid | None]] = field(default_factory=list)
    extents: list[Extent] = field(default_factory=list)
    text: bool = False
    pooled: list[Extent] = field(default_factory=list)
    _records: tuple[PageRecord, ...] | None = field(default=None, repr=False, compare=False)

    def records(self, doc_hash: str) -> tuple[PageRecord, ...]:
        """Its pages as catalog records (made once; a move makes them again)."""
        if self._records is None or (self._records and self._records[0].path != self.path):
            self._records = tuple(PageRecord(doc_hash, self.path, n, v, g) for n, (v, g) in enumerate(self.pages, 1))
        return self._records

    @property
    def staged(self) -> bool:
        """True when every page has its pooled vectors (the candidate stage)."""
        return sum(e.pages for e in self.pooled) == len(self.pages) > 0

    def to_json(self, doc_hash: str) -> dict[str, Any]:
        raw = {"hash": doc_hash, "path": self.path, "n": self.doc_pages, "text": self.text,
               "pages": [[n, *(g.as_list() if g else [])] for n, g in self.pages],
               "extents": [e.as_list() for e in self.extents]}
        if self.pooled:
            raw["pooled"] = [e.as_list() for e in self.pooled]
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> tuple[str, DocEntry]:
        pages = [(int(p[0]), PatchGrid(*map(int, p[1:4])) if len(p) >= 4 else None) for p in raw["pages"]]
        extents = [Extent.from_list(e) for e in raw["extents"]]
        pooled = [Extent.from_list(e) for e in raw.get("pooled", [])]
        entry = cls(str(raw["path"]), int(raw["n"]), pages, extents, bool(raw.get("text", False)), pooled)
        return check_doc_id(raw["hash"]), entry


class CatalogState:
    """Documents, blocks and upkeep of one index, as its log describes them."""

    def __init__(self, model: str, dim: int) -> None:
        self.model, self.dim = model, dim
        self.commit = 0
        self.lance_version: int | None = None
        self.docs: dict[str, DocEntry] = {}  # in search order (commit order)
        self.paths: dict[str, str] = {}  # path -> document hash
        self.pending: dict[str, DocEntry] = {}  # documents being written in pieces
        self.ends: dict[int, int] = {}  # segment file -> committed bytes
        self.last_file = 0
        self.retired: dict[int, float] = {}  # segment file -> when it was retired (epoch seconds)
        self.unpurged: set[str] = set()  # documents gone whose page-table rows may remain

    # -- records ----------------------------------------------------------

    def apply(self, record: dict[str, Any]) -> None:
        """Apply one record (ValueError/KeyError/TypeError if it is malformed)."""
        op = record["op"]
        self.commit += 1
        if record.get("lance") is not None:
            self.lance_version = int(record["lance"])
        self.unpurged.update(check_doc_id(h) for h in record.get("orphans", []))
        for name, end in record.get("ends", {}).items():
            self.ends[int(name)] = max(self.ends.get(int(name), 0), int(end))
            self.last_file = max(self.last_file, int(name))
        if op == "add":
            doc_hash, entry = DocEntry.from_json(record["doc"])
            self._model(record)
            self._show(doc_hash, entry, record.get("gone", []))
        elif op == "piece":
            doc_hash = check_doc_id(record["hash"])
            self._model(record)
            text = bool(record.get("text", False))
            piece = self.pending.get(doc_hash)
            if piece is None:
                piece = self.pending[doc_hash] = DocEntry(str(record["path"]), int(record["n"]), text=text)
            piece.pages.extend((int(p[0]), PatchGrid(*map(int, p[1:4])) if len(p) >= 4 else None)
                               for p in record["pages"])
            piece.extents.append(Extent.from_list(record["extent"]))
            if record.get("pooled") is not None:
                piece.pooled.append(Extent.from_list(record["pooled"]))
            piece.text = piece.text and text
        elif op == "done":
            doc_hash = check_doc_id(record["hash"])
            entry = self.pending.pop(doc_hash)
            if len(entry.pages) != entry.doc_pages:
                raise ValueError(f"document {doc_hash[:12]} done with {len(entry.pages)} of {entry.doc_pages} pages")
            self._show(doc_hash, entry, record.get("gone", []))
        elif op == "drop":
            for doc_hash in record["hashes"]:
                if self.pending.pop(doc_hash, None) is not None:
                    self.unpurged.add(doc_hash)
        elif op == "remove":
            for doc_hash in record["hashes"]:
                self._hide(doc_hash)
        elif op == "move":
            doc_hash, path = check_doc_id(record["hash"]), str(record["path"])
            entry = self.docs[doc_hash]
            self.paths.pop(entry.path, None)
            entry.path = path
            self.paths[path] = doc_hash
        elif op == "text":
            for doc_hash in record["hashes"]:
                if doc_hash in self.docs:
                    self.docs[doc_hash].text = True
        elif op == "purged":
            self.unpurged.difference_update(record["hashes"])
        elif op == "relocate":
            entry = self.docs[check_doc_id(record["hash"])]
            entry.extents = [Extent.from_list(e) for e in record["extents"]]
            if "pooled" in record:
                entry.pooled = [Extent.from_list(e) for e in record["pooled"]]
        elif op == "retire":
            for number in record["files"]:
                self.retired[int(number)] = float(record["at"])
        elif op == "deleted":
            for number in record["files"]:
                self.retired.pop(int(number), None)
                self.ends.pop(int(number), None)
        elif op != "lance":
            raise ValueError(f"unknown record {op!r}")

    def _model(self, record: dict[str, Any]) -> None:
        model = record.get("model", self.model)
        if model != self.model:
            raise ValueError(f"a document embedded by {model!r} in an index of {self.model!r}")

    def _show(self, doc_hash: str, entry: DocEntry, gone: list[str]) -> None:
        for old in gone:
            self._hide(old)
        self._hide(doc_hash)  # a document stored again (after damage) moves to the end
        self.docs[doc_hash] = entry
        self.paths[entry.path] = doc_hash

    def _hide(self, doc_hash: str) -> None:
        entry = self.docs.pop(doc_hash, None)
        if entry is not None:
            if self.paths.get(entry.path) == doc_hash:
                del self.paths[entry.path]
            self.unpurged.add(doc_hash)

    # -- snapshots --------------------------------------------------------

    def live_bytes(self) -> dict[int, int]:
        """Bytes of committed, visible blocks in each segment file."""
        live: dict[int, int] = {}
        for entry in [*self.docs.values(), *self.pending.values()]:
            for extent in [*entry.extents, *entry.pooled]:
                live[extent.file] = live.get(extent.file, 0) + extent.end(self.dim) - extent.offset
        return live

    def catalog(self, stamp: tuple[int, int] | None = None) -> Catalog:
        """The visible documents as a search snapshot."""
        pages = [record for h, e in self.docs.items() for record in e.records(h)]
        extents = {h: tuple(e.extents) for h, e in self.docs.items()}
        pooled = {h: tuple(e.pooled) for h, e in self.docs.items() if e.staged}
        return Catalog(pages, list(self.docs), extents, self.lance_version, stamp, pooled)

    def to_json(self) -> dict[str, Any]:
        return {"format": 3, "model": self.model, "dim": self.dim, "commit": self.commit,
                "lance": self.lance_version, "last_file": self.last_file,
                "ends": {str(k): v for k, v in self.ends.items()},
                "retired": {str(k): v for k, v in self.retired.items()}, "unpurged": sorted(self.unpurged),
                "documents": [e.to_json(h) for h, e in self.docs.items()],
                "pending": [e.to_json(h) for h, e in self.pending.items()]}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> CatalogState:
        state = cls(str(raw["model"]), int(raw["dim"]))
        state.commit, state.lance_version = int(raw["commit"]), raw.get("lance")
        state.last_file = int(raw.get("last_file", 0))
        state.ends = {int(k): int(v) for k, v in raw["ends"].items()}
        state.retired = {int(k): float(v) for k, v in raw.get("retired", {}).items()}
        state.unpurged = {check_doc_id(h) for h in raw.get("unpurged", [])}
        for doc in raw["documents"]:
            doc_hash, entry = DocEntry.from_json(doc)
            state.docs[doc_hash] = entry
            state.paths[entry.path] = doc_hash
        for doc in raw.get("pending", []):
            doc_hash, entry = DocEntry.from_json(doc)
            state.pending[doc_hash] = entry
        return state
