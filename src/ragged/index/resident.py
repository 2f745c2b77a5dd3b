"""A resident index, for a process that searches often (``ragged serve``).

A one-off search streams the memory-mapped fp16 segment files. A
long-lived process holds what it searches in the form the memory policy
allows (:mod:`ragged.index.forms`): every vector and the candidate stage,
or the stage alone with the vectors mapped (the candidates' vectors are
read from the files, which the page cache keeps), or nothing.

What is held is kept in slabs of whole documents in catalog order: one
for the vectors, one for the stage. Documents committed while the process
runs are appended as slabs; a removal or replacement reloads. A reload
runs in the background while searches go on streamed, so readiness never
waits for it. :meth:`ResidentIndex.refresh` is atomic: a failure leaves
the previous state (and version) in place, to be tried again.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from loguru import logger

from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.types import DeviceInfo
from ragged.index.catalog import Catalog
from ragged.index.catalog_log import CATALOG_DIR, CatalogReader
from ragged.index.forms import ENTER_SHARE, RESIDENT_SHARE, STREAMED, FormChoice, choose_form
from ragged.index.search import Block, SegmentSource, gathered, split_blocks
from ragged.index.store import IndexStore

__all__ = ["ENTER_SHARE", "RESIDENT_SHARE", "STREAMED", "FormChoice", "ResidentIndex", "choose_form"]


@dataclass(frozen=True)
class _Held:
    """What one load holds: every vector of its pages, and their stage (each None when not held)."""

    vectors: Block | None
    stage: Block | None


@dataclass(frozen=True)
class _View:
    """What searches read: one catalog, what is held of it, and the files for the rest."""

    catalog: Catalog
    held: tuple[_Held, ...]
    files: SegmentSource  # the segment files of the same snapshot
    streamed: bool  # nothing held yet (a background load) or nothing to hold


class ResidentIndex:
    """The index's vectors held for fast, repeated search (a :class:`~ragged.index.search.StagedSource`)."""

    def __init__(self, store: IndexStore, device: DeviceInfo, manager: DeviceManager,
                 policy: MemoryPolicy | None = None, background: bool = True) -> None:
        self.store = store
        self.device = device
        self.manager = manager
        self.policy = policy or MemoryPolicy()
        self.background = background
        empty = Catalog([], [])
        self._view = _View(empty, (), SegmentSource(store, empty), True)
        self.version: object = None
        self.choice = FormChoice(STREAMED, "not loaded yet")
        self.memory_bytes = 0
        self._loader = ThreadPoolExecutor(1, "ragged-resident-load") if background else None
        self._loading: tuple[Future[_Held], Catalog, FormChoice] | None = None
        self._reader = CatalogReader(store.folder / CATALOG_DIR)
        self.refresh(force=True)

    @property
    def catalog(self) -> Catalog:
        """The pages searched (committed pages only)."""
        return self._view.catalog

    @property
    def form(self) -> str:
        """The form searches read now."""
        return STREAMED if self._view.streamed else self.choice.form

    @property
    def loading(self) -> str | None:
        """The form being loaded in the background, if any."""
        return self._loading[2].form if self._loading is not None else None

    def _budget(self) -> int | None:
        """The policy's budget for this device, the resident copy itself counted as free."""
        budget = self.policy.batch_budget(self.manager.try_memory_info(self.device))
        return None if budget is None else budget + self.memory_bytes

    def refresh(self, force: bool = False) -> bool:
        """Take in what was committed since the last look (and a finished
        background load); True when what searches read changed: pages, the
        form, or anything else committed (a text side given to stored pages
        changes no page but changes what text and keyword searches read).
        On failure nothing changes (the same commits are read again next time)."""
        installed = self._install_loaded()
        version = self.store.stamp()
        if not force and version == self.version:
            return installed
        store = IndexStore.open(self.store.folder)  # meta read again: a text side added later is seen
        if not store.legacy:
            store.reader = self._reader  # the log read from where the last look stopped: costs the change
        try:
            catalog = store.catalog()
        except BaseException:
            self._reader = CatalogReader(store.folder / CATALOG_DIR)  # it may have read part: start again
            raise
        old = self._view
        assert store.meta is not None
        pooled = int(sum(e.vectors for extents in catalog.pooled.values() for e in extents))
        choice = choose_form(catalog.total_vectors, pooled, store.meta.dim, self.device, self._budget(),
                             self.choice.form)
        files = SegmentSource(store, catalog)
        appended = (choice.holds_as(self.choice) and choice.holds and not old.streamed and self._loading is None
                    and len(catalog.pages) >= len(old.catalog.pages)
                    and catalog.pages[: len(old.catalog.pages)] == old.catalog.pages
                    # no earlier document's stage changed or was built since (upkeep pools older ones)
                    and all(catalog.pooled.get(d) == old.catalog.pooled.get(d) for d in old.catalog.documents))
        if not choice.holds:
            view = _View(catalog, (), files, True)
            self._cancel_loading()
        elif appended:
            extra = (self._load(store, catalog, len(old.catalog.pages), choice),) if len(catalog.pages) > len(
                old.catalog.pages) else ()
            view = _View(catalog, old.held + extra, files, False)
        else:
            view = self._reload(store, catalog, choice, files)
        changed = force or catalog.pages != old.catalog.pages or choice.form != self.choice.form
        self.store, self.version, self.choice, self._view = store, version, choice, view  # the switch
        self.memory_bytes = _bytes(view.held)
        if changed:
            self._say()
        return True  # a new commit: the store and catalog to answer from are new

    def _reload(self, store: IndexStore, catalog: Catalog, choice: FormChoice, files: SegmentSource) -> _View:
        """Everything again: in the background (searches stream meanwhile), or now."""
        self._cancel_loading()
        if not catalog.pages:
            return _View(catalog, (), files, False)
        if self._loader is None:
            return _View(catalog, (self._load(store, catalog, 0, choice),), files, False)
        future = self._loader.submit(self._load, store, catalog, 0, choice)
        self._loading = (future, catalog, choice)
        return _View(catalog, (), files, True)

    def _install_loaded(self) -> bool:
        if self._loading is None or not self._loading[0].done():
            return False
        future, catalog, choice = self._loading
        self._loading = None
        try:
            held = future.result()
        except Exception as exc:  # the streamed view stays; the next refresh tries again
            logger.warning("Loading the resident vectors failed ({}); searching the segment files meanwhile.", exc)
            self.version = None
            return False
        if catalog is not self._view.catalog or not choice.holds_as(self.choice):
            self.version = None  # the index moved on while loading: load again
            return False
        self._view = _View(catalog, (held,), self._view.files, False)
        self.memory_bytes = _bytes(self._view.held)
        self._say()
        return True

    def _cancel_loading(self) -> None:
        if self._loading is not None:
            self._loading[0].cancel()
            self._loading = None

    def _say(self) -> None:
        loading = f", loading {self.loading} in the background" if self.loading else ""
        logger.info("Index: {} pages held as {} ({:.0f} MiB{}): {}", len(self.catalog.pages), self.form,
                    self.memory_bytes / 2**20, loading, self.choice.reason)

    def _load(self, store: IndexStore, catalog: Catalog, first: int, choice: FormChoice) -> _Held:
        """What ``choice`` holds of pages ``first:`` (a document boundary)."""
        assert store.meta is not None
        part = catalog.since(first)
        source = SegmentSource(store, part)
        vectors = stage = None
        if choice.element_bytes and len(part.pages):
            vectors = self._hold(source.blocks(2**62), part.lengths, first, None, choice.element_bytes,
                                 store.meta.dim)
        if choice.stage and part.staged.any():
            lengths = np.concatenate([np.full(e.pages, e.vectors // e.pages, dtype=np.int64)
                                      for d in part.documents for e in part.pooled.get(d, ())])  # (staged pages,)
            stage = self._hold(source.pooled_blocks(2**62), lengths, first, np.flatnonzero(part.staged) + first,
                               choice.stage_element_bytes, store.meta.dim)
        return _Held(vectors, stage)

    def _hold(self, blocks: Iterator[Block], lengths: np.ndarray, first: int, positions: np.ndarray | None,
              element: int, dim: int) -> Block:
        """The rows ``blocks`` give, copied into one slab: on the device (fp16),
        f32 columns (the CPU kernel's layout) or fp16 rows."""
        total = int(lengths.sum())
        columns: np.ndarray | None = None
        if self.device.is_accelerator:
            target: torch.Tensor | np.ndarray = torch.empty((total, dim), dtype=torch.float16,
                                                            device=self.device.torch_device)
        elif element == 2:
            target = np.empty((total, dim), dtype=np.float16)  # (n, dim) rows, as the files hold them
        else:
            columns = np.empty((dim, total), dtype=np.float32)  # (dim, n)
            target = torch.from_numpy(columns).t()  # (n, dim) view: filled row by row
        at = 0
        for block in blocks:
            vectors = np.asarray(block.vectors)
            n = vectors.shape[0]
            if isinstance(target, torch.Tensor):
                target[at : at + n].copy_(torch.from_numpy(vectors))  # fp16 -> the resident dtype
            else:
                target[at : at + n] = vectors
            at += n
        if columns is not None:
            return Block(first, lengths, columns, columns=True, positions=positions)
        return Block(first, lengths, target, columns=False, positions=positions)

    # -- what searches read (a StagedSource) ---------------------------------

    def blocks(self, max_vectors: int) -> Iterator[Block]:
        """Every page's vectors in blocks of whole pages, at most ``max_vectors`` each, in catalog order."""
        view = self._current()
        slabs = [h.vectors for h in view.held if h.vectors is not None]
        if not slabs:
            yield from view.files.blocks(max_vectors)
            return
        for slab in slabs:
            yield from split_blocks(slab.first, slab.lengths, slab.vectors, max_vectors, slab.columns)

    def pooled_blocks(self, max_vectors: int) -> Iterator[Block]:
        """The candidate stage in blocks (pages that have it)."""
        view = self._current()
        slabs = [h.stage for h in view.held if h.stage is not None]
        if view.streamed or not self.choice.stage:
            yield from view.files.pooled_blocks(max_vectors)
            return
        for slab in slabs:
            yield from split_blocks(slab.first, slab.lengths, slab.vectors, max_vectors, slab.columns, slab.positions)

    def page_blocks(self, positions: np.ndarray, max_vectors: int) -> Iterator[Block]:
        """The vectors of the pages at ``positions`` (sorted): from the slabs where
        held, else from the mapped files."""
        view = self._current()
        slabs = [h.vectors for h in view.held if h.vectors is not None]
        if not slabs:
            yield from view.files.page_blocks(positions, max_vectors)
            return
        parts = (_taken(slab, positions) for slab in slabs)
        yield from gathered((part for part in parts if len(part[0])), max_vectors)

    def _current(self) -> _View:
        self._install_loaded()  # a background load that finished since the last look
        return self._view  # one view for the whole search

    def release(self) -> None:
        """Drop what is held (its memory goes back)."""
        self._cancel_loading()
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
        self._view = _View(self._view.catalog, (), self._view.files, True)
        self.memory_bytes = 0


def _taken(slab: Block, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pages of ``slab`` at ``positions`` (those it holds): (positions, vector counts, rows)."""
    mine = positions[(positions >= slab.first) & (positions < slab.first + len(slab.lengths))]
    offsets = np.concatenate(([0], np.cumsum(slab.lengths)))
    at = mine - slab.first
    if isinstance(slab.vectors, torch.Tensor):
        rows = torch.cat([slab.vectors[offsets[p] : offsets[p + 1]] for p in at.tolist()]) if len(at) else (
            slab.vectors[:0])
        return mine, slab.lengths[at], rows  # type: ignore[return-value]
    vectors = slab.vectors.T if slab.columns else slab.vectors  # (n, dim) rows, a view of columns
    parts = [vectors[offsets[p] : offsets[p + 1]] for p in at.tolist()]
    return mine, slab.lengths[at], (np.concatenate(parts) if parts else vectors[:0])


def _bytes(held: tuple[_Held, ...]) -> int:
    slabs = [s for h in held for s in (h.vectors, h.stage) if s is not None]
    return sum(int(s.vectors.element_size() * s.vectors.numel()) if isinstance(s.vectors, torch.Tensor)
               else int(s.vectors.nbytes) for s in slabs)
