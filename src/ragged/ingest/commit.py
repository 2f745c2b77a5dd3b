"""Documents in flight, committed whole once every page is embedded.

Shared by the single-process stream and the distributed driver: pages may
arrive in any order and from any worker (a page embedded twice, after a
worker was lost, is stored once); a document is committed, once, when its
last page arrives; a page that fails fails its document alone. Each page
is counted in progress once: when its result arrives, or when its document
fails before the page was sent anywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

from ragged.index.store import IndexStore, StoredPage, absolute
from ragged.ingest.documents import Document, InputProblem
from ragged.ingest.report import IngestReport
from ragged.ingest.text_side import TextSide


@dataclass
class Pending:
    """One document in flight."""

    doc: Document
    pages: list[StoredPage | None]
    sent: int = 0  # pages handed to an embedder (each counted in progress when its result comes)
    failed: bool = False

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.pages)


class Committer:
    """Collects page results and commits complete documents through the single writer."""

    def __init__(self, store: IndexStore, report: IngestReport, advance: object, replaces: set[str],
                 text: TextSide) -> None:
        self.store, self.report, self.replaces, self.text = store, report, replaces, text
        self.advance = advance  # Progress.advance: pages done
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
        if not entry.failed and 0 <= number < len(entry.pages):
            entry.pages[number] = page

    def fail(self, entry: Pending, message: str) -> None:
        """``entry`` cannot be stored: report it once, count its unsent pages."""
        if entry.failed:
            return
        entry.failed = True
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
            pages = self.text.attach(self.store, [p for p in entry.pages if p is not None], self.report.text)
            self.store.add_document(entry.doc.sha256, str(entry.doc.path), pages)
            if absolute(entry.doc.path) in self.replaces:
                self.report.documents_replaced += 1
            else:
                self.report.documents_added += 1
            self.report.pages_added += len(pages)
            self.report.pages_without_text += sum(not p.text for p in pages)
            del self.pending[key]
            done += 1
        return done
