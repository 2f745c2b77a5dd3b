"""A resident copy of the page vectors, for a process that searches often.

A one-off search streams the memory-mapped fp16 segment files. A
long-lived process (``ragged serve``) can do better: it holds the vectors
in the fastest form the memory policy allows, tried in this order:

==================  ==========================================================
form                when
==================  ==========================================================
``fp16 on <dev>``   searching on an accelerator: no upload per search
``f32 in RAM``      on the CPU: no fp16 conversion per search, stored as
                    columns, the layout the CPU kernel reads
``fp16 in RAM``     on the CPU where f32 does not fit: half the memory, held
                    (never paged out, unlike the files' page cache)
``streamed``        none fits: the segment files, as a one-off search reads
                    them (never slower than a fresh process)
==================  ==========================================================

A form fits when it needs at most :data:`RESIDENT_SHARE` of the policy's
budget, the resident copy itself not counted as used (it would otherwise
count against its own test). A larger form is taken only below
:data:`ENTER_SHARE` of that limit, and kept until past it, so an index
near the line does not flip between forms (a full reload each time) at
every commit.

Vectors are kept in slabs of whole documents in catalog order. Documents
committed while the process runs are appended as a slab; a removal or
replacement reloads. A reload runs in the background while searches go on
streamed, so readiness never waits for it. :meth:`ResidentIndex.refresh`
is atomic: a failure leaves the previous state (and version) in place, to
be tried again.
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
from ragged.index.search import Block, SegmentSource, split_blocks
from ragged.index.store import IndexStore

RESIDENT_SHARE = 0.5  # of the device's batch budget the resident copy may take
ENTER_SHARE = 0.8  # of that limit, below which a larger form is taken (hysteresis)
STREAMED = "streamed"


@dataclass(frozen=True)
class FormChoice:
    """The form chosen, and why (for the start-up line and ``/metrics``)."""

    form: str
    reason: str
    element_bytes: int = 0  # per vector element in that form (0: streamed)


def choose_form(vectors: int, dim: int, device: DeviceInfo, budget: int | None, current: str) -> FormChoice:
    """The largest form that fits ``budget`` (bytes the policy allows, the
    resident copy not counted), with hysteresis around ``current``."""
    forms = [(f"fp16 on {device.label}", 2)] if device.is_accelerator else [("f32 in RAM", 4), ("fp16 in RAM", 2)]
    if budget is None:
        return FormChoice(STREAMED, f"the memory of {device.label} cannot be read")
    limit = budget * RESIDENT_SHARE
    tried = []
    for form, element in forms:
        need = vectors * dim * element
        allowed = limit if form == current else limit * ENTER_SHARE
        if need <= allowed:
            return FormChoice(form, f"needs {need / 2**20:.0f} MiB of {limit / 2**20:.0f} MiB allowed "
                                    f"(half the memory policy's budget)", element)
        tried.append(f"{form} would need {need / 2**20:.0f} MiB")
    return FormChoice(STREAMED, f"{'; '.join(tried)}; {limit / 2**20:.0f} MiB allowed (half the memory policy's "
                                "budget)")


@dataclass(frozen=True)
class _View:
    """What searches read: one catalog and its vectors (slabs, or streamed)."""

    catalog: Catalog
    slabs: tuple[Block, ...]
    streamed: SegmentSource | None


class ResidentIndex:
    """The index's page vectors held for fast, repeated search."""

    def __init__(self, store: IndexStore, device: DeviceInfo, manager: DeviceManager,
                 policy: MemoryPolicy | None = None, background: bool = True) -> None:
        self.store = store
        self.device = device
        self.manager = manager
        self.policy = policy or MemoryPolicy()
        self.background = background
        self._view = _View(Catalog([], []), (), None)
        self.version: object = None
        self.choice = FormChoice(STREAMED, "not loaded yet")
        self.memory_bytes = 0
        self._loader = ThreadPoolExecutor(1, "ragged-resident-load") if background else None
        self._loading: tuple[Future[Block | None], Catalog, FormChoice] | None = None
        self._reader = CatalogReader(store.folder / CATALOG_DIR)
        self.refresh(force=True)

    @property
    def catalog(self) -> Catalog:
        """The pages held (committed pages only)."""
        return self._view.catalog

    @property
    def form(self) -> str:
        """The form searches read now."""
        return STREAMED if self._view.streamed is not None else self.choice.form

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
        choice = choose_form(catalog.total_vectors, store.meta.dim, self.device, self._budget(), self.choice.form)
        appended = (choice.form == self.choice.form and choice.form != STREAMED and old.streamed is None
                    and self._loading is None and len(catalog.pages) >= len(old.catalog.pages)
                    and catalog.pages[: len(old.catalog.pages)] == old.catalog.pages)
        if choice.form == STREAMED:
            view = _View(catalog, (), SegmentSource(store, catalog))
            self._cancel_loading()
        elif appended:
            extra = (self._load(store, catalog, len(old.catalog.pages), choice),) if len(catalog.pages) > len(
                old.catalog.pages) else ()
            view = _View(catalog, old.slabs + tuple(s for s in extra if s is not None), None)
        else:
            view = self._reload(store, catalog, choice)
        changed = force or catalog.pages != old.catalog.pages or choice.form != self.choice.form
        self.store, self.version, self.choice, self._view = store, version, choice, view  # the switch
        self.memory_bytes = _bytes(view.slabs)
        if changed:
            self._say()
        return True  # a new commit: the store and catalog to answer from are new

    def _reload(self, store: IndexStore, catalog: Catalog, choice: FormChoice) -> _View:
        """Every vector again: in the background (searches stream meanwhile), or now."""
        self._cancel_loading()
        if not catalog.pages:
            return _View(catalog, (), None)
        if self._loader is None:
            block = self._load(store, catalog, 0, choice)
            return _View(catalog, (block,) if block is not None else (), None)
        future = self._loader.submit(self._load, store, catalog, 0, choice)
        self._loading = (future, catalog, choice)
        return _View(catalog, (), SegmentSource(store, catalog))

    def _install_loaded(self) -> bool:
        if self._loading is None or not self._loading[0].done():
            return False
        future, catalog, choice = self._loading
        self._loading = None
        try:
            block = future.result()
        except Exception as exc:  # the streamed view stays; the next refresh tries again
            logger.warning("Loading the resident vectors failed ({}); searching the segment files meanwhile.", exc)
            self.version = None
            return False
        if catalog is not self._view.catalog or choice != self.choice:
            self.version = None  # the index moved on while loading: load again
            return False
        self._view = _View(catalog, (block,) if block is not None else (), None)
        self.memory_bytes = _bytes(self._view.slabs)
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

    def _load(self, store: IndexStore, catalog: Catalog, first: int, choice: FormChoice) -> Block | None:
        """The vectors of pages ``first:`` in the resident form."""
        assert store.meta is not None
        dim = store.meta.dim
        part = Catalog(catalog.pages[first:], catalog.documents, catalog.extents, catalog.lance_version)
        source = SegmentSource(store, part)
        lengths = np.array([p.n_vectors for p in part.pages], dtype=np.int64)
        total = int(lengths.sum())
        if not total:
            return None
        columns: np.ndarray | None = None
        if self.device.is_accelerator:
            target: torch.Tensor | np.ndarray = torch.empty((total, dim), dtype=torch.float16,
                                                            device=self.device.torch_device)
        elif choice.element_bytes == 2:
            target = np.empty((total, dim), dtype=np.float16)  # (n, dim) rows, as the files hold them
        else:
            columns = np.empty((dim, total), dtype=np.float32)  # (dim, n)
            target = torch.from_numpy(columns).t()  # (n, dim) view: filled row by row
        at = 0
        for block in source.blocks(2**62):
            vectors = np.asarray(block.vectors)
            n = vectors.shape[0]
            if isinstance(target, torch.Tensor):
                target[at : at + n].copy_(torch.from_numpy(vectors))  # fp16 -> the resident dtype
            else:
                target[at : at + n] = vectors
            at += n
        if columns is not None:
            return Block(first, lengths, columns, columns=True)
        return Block(first, lengths, target, columns=False)

    def blocks(self, max_vectors: int) -> Iterator[Block]:
        """Blocks of whole pages, at most ``max_vectors`` each, in catalog order."""
        self._install_loaded()  # a background load that finished since the last look
        view = self._view  # one view for the whole search
        if view.streamed is not None:
            yield from view.streamed.blocks(max_vectors)
            return
        for slab in view.slabs:
            yield from split_blocks(slab.first, slab.lengths, slab.vectors, max_vectors, slab.columns)

    def release(self) -> None:
        """Drop the resident vectors (their memory goes back)."""
        self._cancel_loading()
        if self._loader is not None:
            self._loader.shutdown(wait=True, cancel_futures=True)
        self._view = _View(self._view.catalog, (), None)
        self.memory_bytes = 0


def _bytes(slabs: tuple[Block, ...]) -> int:
    return sum(int(s.vectors.element_size() * s.vectors.numel()) if isinstance(s.vectors, torch.Tensor)
               else int(s.vectors.nbytes) for s in slabs)
