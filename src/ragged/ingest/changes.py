"""What ingest must do with each file, given what the index holds.

Documents are tracked by absolute path and identified by content hash:

==========================================  =================================
the file                                    ingest
==========================================  =================================
path stored with the same content           skips it (unchanged)
path stored with other content              embeds it and replaces the old
                                            pages in the same commit
content stored under a path that is gone    records the new path (a move);
                                            nothing is embedded again
content stored under a path still there     skips it (a duplicate)
neither                                     embeds it (new)
==========================================  =================================
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ragged.errors import InputError
from ragged.index.catalog import DocumentRecord
from ragged.index.store import absolute
from ragged.ingest.documents import Document, InputProblem, inspect


@dataclass(frozen=True)
class Move:
    """A stored document found at a new path."""

    doc_hash: str
    old_path: str
    new_path: str


@dataclass
class Plan:
    """Ingest's decisions for one run."""

    embed: list[Document] = field(default_factory=list)
    replaces: set[str] = field(default_factory=set)  # absolute paths whose stored document is replaced
    moves: list[Move] = field(default_factory=list)
    unchanged: int = 0
    duplicates: list[tuple[str, str]] = field(default_factory=list)  # (path, the stored path with its content)
    outdated: list[str] = field(default_factory=list)  # stored hashes whose path now holds a duplicate
    problems: list[InputProblem] = field(default_factory=list)


def plan_changes(files: list[Path], stored: list[DocumentRecord]) -> Plan:
    """Decide, for every file, whether to skip, move, replace or embed it."""
    by_path = {d.path: d for d in stored}
    by_hash = {d.doc_hash: d for d in stored}
    plan = Plan()
    seen: dict[str, str] = {}  # content hash -> path, within this run
    for path in files:
        try:
            doc = inspect(path)
        except InputError as exc:
            plan.problems.append(InputProblem(str(path), str(exc)))
            continue
        where = absolute(path)
        here = by_path.get(where)
        if here is not None and here.doc_hash == doc.sha256:
            plan.unchanged += 1
            continue
        if doc.sha256 in seen:
            plan.duplicates.append((where, seen[doc.sha256]))
            continue
        seen[doc.sha256] = where
        elsewhere = by_hash.get(doc.sha256)
        if elsewhere is not None:
            if here is not None:
                plan.outdated.append(here.doc_hash)  # this path's old content is no longer anywhere
            if not Path(elsewhere.path).exists() and here is None:
                plan.moves.append(Move(doc.sha256, elsewhere.path, where))
            else:
                plan.duplicates.append((where, elsewhere.path))
            continue
        if here is not None:
            plan.replaces.add(where)
        plan.embed.append(doc)
    return plan


def missing_under(stored: list[DocumentRecord], roots: list[Path]) -> list[DocumentRecord]:
    """Stored documents under ``roots`` (folders, or files themselves) whose files are gone."""
    folders = [Path(absolute(r)) for r in roots]
    out = []
    for record in stored:
        path = Path(record.path)
        if path.exists():
            continue
        if any(path == f or path.is_relative_to(f) for f in folders):
            out.append(record)
    return out


def stored_under(stored: list[DocumentRecord], roots: list[Path]) -> tuple[list[DocumentRecord], list[Path]]:
    """(stored documents at or under ``roots``, roots that match none)."""
    found: dict[str, DocumentRecord] = {}
    unmatched = []
    for root in roots:
        target = Path(absolute(root))
        hits = [d for d in stored if Path(d.path) == target or Path(d.path).is_relative_to(target)]
        if not hits and not root.is_absolute():  # format 1 indexes kept paths as typed
            hits = [d for d in stored if d.path == str(root)]
        if not hits:
            unmatched.append(root)
        found.update((d.doc_hash, d) for d in hits)
    return list(found.values()), unmatched
