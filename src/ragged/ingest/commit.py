"""Documents in flight, committed whole once every page is embedded.

Shared by the single-process stream and the distributed driver: pages may
arrive in any order and from any worker (a page embedded twice, after a
worker was lost, is stored once); a document becomes visible, once, when
its last page arrives; a page that fails fails its document alone. Each
page is counted in progress once: when its result arrives, or when its
document fails before the page was sent anywhere.

A long document is not held whole until then: as soon as the pages from
the first one not yet stored make up :data:`PIECE_BYTES`, they are written
as a piece (durable, invisible to searches) and dropped from memory; the
last page's arrival writes the rest and makes the document visible in one
record (see :meth:`~ragged.index.store.IndexStore.begin_document`). A
3,000-page PDF holds at most a piece and the pages that arrived early.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragged.index.store import IndexStore, StoredPage, absolute
from ragged.index.writing import DocumentWriter
from ragged.ingest.documents import Document, InputProblem
from ragged.ingest.report import IngestReport
from ragged.ingest.text_side import TextSide

PIECE_BYTES = 64 * 1024**2  # page vectors held for one document before they are written as a piece


@dataclass
class Pending:
    """One document in flight."""

    doc: Document
    pages: list[StoredPage | None]
    sent: int = 0  # pages handed to an embedder (each counted in progress when its result comes)
    failed: bool = False
    stored: int = 0  # pages written as pieces (their slots are emptied)
    writer: DocumentWriter | None = None

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.pages[self.stored :])

    def ready_bytes(self) -> int:
        """Bytes of the pages from the first unstored one that have all arrived."""
        total = 0
        for page in self.pages[self.stored :]:
            if page is None:
                break
            total += page.vectors.nbytes + (page.text_vectors.nbytes if page.text_vectors is not None else 0)
        return total


class Committer:
    """Collects page results and commits complete documents through the single writer."""

    def __init__(self, store: IndexStore, report: IngestReport, advance: object, replaces: set[str],
                 text: TextSide, piece_bytes: int | None = None) -> None:
        self.store, self.report, self.replaces, self.text = store, report, replaces, text
        self.advance = advance  # Progress.advance: pages done
        self.piece_bytes = PIECE_BYTES if piece_bytes is None else piece_bytes
        self.pending: dict[str, Pending] = {}

    def open(self, doc: Document) -> Pending:
        """Start tracking ``doc``."""
        entry = self.pending.setdefault(doc.sha256, Pending(doc, [None] * doc.pages))
        return entry

    def get(self, doc_hash: str) -> Pending | None:
        """The document in flight with this hash (None once committed or dropped)."""
        return self.pending.get(doc_hash)

    def page(self, entry: Pending, number: int, page: StoredPage) -> None:
        """Page ``number`` (0-based) of ``entry`` is embedded (again: kept once)."""
        if not entry.failed and entry.stored <= number < len(entry.pages):
            entry.pages[number] = page
            if not entry.complete and entry.ready_bytes() >= self.piece_bytes:
                self._store_piece(entry)

    def _store_piece(self, entry: Pending) -> None:
        """Write the arrived run of pages from the first unstored one, and let them go."""
        end = entry.stored
        while end < len(entry.pages) and entry.pages[end] is not None:
            end += 1
        pages = self.text.attach(self.store, [p for p in entry.pages[entry.stored : end] if p is not None],
                                 self.report.text)
        if entry.writer is None:
            entry.writer = self.store.begin_document(entry.doc.sha256, str(entry.doc.path), entry.doc.pages)
        entry.writer.add(pages)
        self.report.pages_without_text += sum(not p.text for p in pages)
        for n in range(entry.stored, end):
            entry.pages[n] = None
        entry.stored = end

    def fail(self, entry: Pending, message: str) -> None:
        """``entry`` cannot be stored: report it once, count its unsent pages."""
        if entry.failed:
            return
        entry.failed = True
        if entry.writer is not None:
            entry.writer.abandon()
        self.report.problems.append(InputProblem(str(entry.doc.path), message))
        self.advance(entry.doc.pages - entry.sent)  # type: ignore[operator]

    def commit_ready(self) -> int:
        """Commit every complete document; how many were committed."""
        done = 0
        for key, entry in list(self.pending.items()):
            if entry.failed:
                del self.pending[key]
                continue
            if not entry.complete:
                continue
            pages = self.text.attach(self.store, [p for p in entry.pages[entry.stored :] if p is not None],
                                     self.report.text)
            if entry.writer is None:
                self.store.add_document(entry.doc.sha256, str(entry.doc.path), pages)
            else:
                entry.writer.add(pages, final=True)
            if absolute(entry.doc.path) in self.replaces:
                self.report.documents_replaced += 1
            else:
                self.report.documents_added += 1
            self.report.pages_added += entry.doc.pages
            self.report.pages_without_text += sum(not p.text for p in pages)
            del self.pending[key]
            done += 1
        return done
