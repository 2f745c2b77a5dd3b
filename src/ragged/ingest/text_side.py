"""The text side of ingest: passages of each page's text, embedded and stored
with the page in the same commit.

The text model shares the vision model's :class:`ModelManager` (one memory
budget: where both do not fit, the manager unloads the one used least
recently) and its OOM engine. Where the text model cannot be had (offline
without ``ragged[text]``), ingest goes on with images only and says so.
Documents stored before the text side get it on the next ingest, from their
files' text layer, without their images being embedded again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from loguru import logger

from ragged.errors import InputError, ModelError
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.model_manager import ModelManager
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.policy import MemoryPolicy
from ragged.index.catalog import DocumentRecord
from ragged.index.store import IndexStore, StoredPage
from ragged.ingest.conversion import with_kept_pdf
from ragged.ingest.documents import file_sha256, inspect, page_texts
from ragged.ingest.report import IngestReport
from ragged.ingest.tally import TextTally
from ragged.text.model import NO_TEXT_MODEL

if TYPE_CHECKING:
    from ragged.text.embedder import TextEmbedder


@dataclass
class TextSide:
    """The text model of one ingest run (None: images only)."""

    embedder: TextEmbedder | None
    reason: str | None = None  # why there is none

    @classmethod
    def start(cls, name: str | None, *, device: DeviceHint, cache_dir: Path | None, models: ModelManager,
              policy: MemoryPolicy, oom_handler: OOMHandler, explicit: bool) -> TextSide:
        """The text side for ``name`` ("none": off). A default model that cannot
        be had turns it off with a note; a model the user named must load."""
        if not name or name == NO_TEXT_MODEL:
            return cls(None, "the text model is off (--text-model none)")
        from ragged.text.embedder import TextEmbedder

        try:
            return cls(TextEmbedder(name, device, cache_dir=cache_dir, device_manager=models.manager,
                                    model_manager=models, policy=policy, oom_handler=oom_handler))
        except ModelError as exc:
            if explicit:
                raise
            logger.warning("No text model: {}", exc)
            return cls(None, f"pages are searchable by image only: {exc}")

    @property
    def on(self) -> bool:
        """True when text vectors are made."""
        return self.embedder is not None

    def vectors(self, texts: Sequence[str], report: TextTally) -> list[np.ndarray]:
        """Each text's passage vectors, (passages, dim): every passage of every
        text embedded in one run of batches."""
        embedder = self.embedder
        assert embedder is not None
        per_text = [embedder.passages(t) for t in texts]
        flat = [p for passages in per_text for p in passages]
        vectors = embedder.embed_passages(flat)  # (passages, dim)
        if embedder.last_report is not None and flat:
            report.passages += len(flat)
            report.text_seconds += embedder.last_report.seconds
        out, at = [], 0
        for passages in per_text:
            out.append(vectors[at : at + len(passages)])
            at += len(passages)
        return out

    def attach(self, store: IndexStore, pages: list[StoredPage], report: IngestReport) -> list[StoredPage]:
        """``pages`` with their text vectors (unchanged when the text side is
        off, or when a worker already made them)."""
        if not self.on:
            return pages
        self.record_model(store)
        missing = [n for n, p in enumerate(pages) if p.text_vectors is None]
        if not missing:
            return pages
        vectors = self.vectors([pages[n].text or "" for n in missing], report)
        out = list(pages)
        for n, v in zip(missing, vectors, strict=True):
            out[n] = replace(pages[n], text=pages[n].text or "", text_vectors=v)
        return out

    def record_model(self, store: IndexStore) -> None:
        """Record this text model in the index (refused if it holds another's vectors)."""
        embedder = self.embedder
        assert embedder is not None
        store.set_text_model(embedder.name, embedder.dim)

    def upgrade(self, store: IndexStore, older: list[DocumentRecord], report: IngestReport) -> None:
        """Give ``older`` documents (from :func:`awaiting_text`) their text and
        passage vectors (their images are not embedded again)."""
        if not self.on:
            return
        for record in older:
            path = Path(record.path)
            try:
                texts = page_texts(with_kept_pdf(inspect(path), store.folder))
            except InputError as exc:
                logger.warning("{}", exc)
                continue
            if len(texts) != record.pages:
                continue
            self.record_model(store)
            store.set_text(record.doc_hash, list(zip(texts, self.vectors(texts, report), strict=True)))
            report.documents_text_added += 1

    def close(self) -> None:
        """Release the text model."""
        if self.embedder is not None:
            self.embedder.close()


def awaiting_text(store: IndexStore, stored: list[DocumentRecord]) -> list[DocumentRecord]:
    """Stored documents without a text side whose file is still there and
    unchanged: the ones a text model can give their text. A document whose
    file is gone or changed is re-ingested or pruned instead, so it never
    makes a run load the text model for nothing."""
    lacking = store.documents_without_text()
    ready = []
    for record in stored:
        if record.doc_hash not in lacking:
            continue
        path = Path(record.path)
        try:
            if path.is_file() and file_sha256(path) == record.doc_hash:
                ready.append(record)
        except OSError:
            continue
    return ready
