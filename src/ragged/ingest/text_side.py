"""The text side of ingest: passages of each page's text, embedded and stored
with the page in the same commit.

The text model runs under the run's :class:`~ragged.gpu.runtime.Runtime`,
beside the vision model: one model manager and one memory budget (where
both do not fit, the manager weighs unloading the vision model against
running the small text model on the CPU), and one OOM engine. Where the text model cannot be had (offline
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

from ragged.embeddings.report import EmbeddingReport
from ragged.errors import InputError, ModelError
from ragged.gpu.device_manager import DeviceHint
from ragged.gpu.runtime import Runtime
from ragged.index.catalog import DocumentRecord
from ragged.index.store import IndexStore, StoredPage
from ragged.ingest.conversion import with_kept_pdf
from ragged.ingest.documents import file_sha256, inspect, page_texts
from ragged.text.model import NO_TEXT_MODEL

if TYPE_CHECKING:
    from ragged.text.embedder import TextEmbedder


@dataclass
class TextSide:
    """The text model of one ingest run (None: images only)."""

    embedder: TextEmbedder | None
    reason: str | None = None  # why there is none

    @classmethod
    def start(cls, name: str | None, *, device: DeviceHint, cache_dir: Path | None, runtime: Runtime,
              explicit: bool) -> TextSide:
        """The text side for ``name`` ("none": off). A default model that cannot
        be had turns it off with a note; a model the user named must load."""
        if not name or name == NO_TEXT_MODEL:
            return cls(None, "the text model is off (--text-model none)")
        from ragged.text.embedder import TextEmbedder

        try:
            return cls(TextEmbedder(name, device, cache_dir=cache_dir, runtime=runtime))
        except ModelError as exc:
            if explicit:
                raise
            logger.warning("No text model: {}", exc)
            return cls(None, f"pages are searchable by image only: {exc}")

    @property
    def on(self) -> bool:
        """True when text vectors are made."""
        return self.embedder is not None

    def vectors(self, texts: Sequence[str], tally: EmbeddingReport) -> list[np.ndarray]:
        """Each text's passage vectors, (passages, dim): every passage of every
        text embedded in one run of batches, its figures added to ``tally``."""
        embedder = self.embedder
        assert embedder is not None
        per_text = [embedder.passages(t) for t in texts]
        flat = [p for passages in per_text for p in passages]
        run = embedder.encode_passages(flat)
        tally.absorb(run.report)
        vectors = run.values()  # each (dim,)
        out, at = [], 0
        for passages in per_text:
            part = vectors[at : at + len(passages)]
            out.append(np.stack(part).astype(np.float32) if part else np.zeros((0, embedder.dim), np.float32))
            at += len(passages)
        return out

    def attach(self, store: IndexStore, pages: list[StoredPage], tally: EmbeddingReport) -> list[StoredPage]:
        """``pages`` with their text vectors (unchanged when the text side is
        off, or when a worker already made them); figures go to ``tally``."""
        if not self.on:
            return pages
        self.record_model(store)
        missing = [n for n, p in enumerate(pages) if p.text_vectors is None]
        if not missing:
            return pages
        vectors = self.vectors([pages[n].text or "" for n in missing], tally)
        out = list(pages)
        for n, v in zip(missing, vectors, strict=True):
            out[n] = replace(pages[n], text=pages[n].text or "", text_vectors=v)
        return out

    def record_model(self, store: IndexStore) -> None:
        """Record this text model in the index (refused if it holds another's vectors)."""
        embedder = self.embedder
        assert embedder is not None
        store.set_text_model(embedder.name, embedder.dim)

    def upgrade(self, store: IndexStore, older: list[DocumentRecord], tally: EmbeddingReport) -> int:
        """Give ``older`` documents (from :func:`awaiting_text`) their text and
        passage vectors (their images are not embedded again); how many got them."""
        if not self.on:
            return 0
        done = 0
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
            store.set_text(record.doc_hash, list(zip(texts, self.vectors(texts, tally), strict=True)))
            done += 1
        return done

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
