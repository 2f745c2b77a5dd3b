"""A resident copy of the page vectors, for a process that searches often.

A one-off search streams the memory-mapped fp16 segments. A long-lived
process (``ragged serve``) can do better: it holds the vectors in the form
that searches fastest, if the memory policy's budget allows it:

==================  ==========================================================
form                when
==================  ==========================================================
``f32 in RAM``      searching on the CPU: no fp16 conversion per search, and
                    stored as columns, the layout the CPU kernel reads
``fp16 on <dev>``   searching on an accelerator: no upload per search
``streamed``        either does not fit half the budget: segments, as a
                    one-off search reads them
==================  ==========================================================

Vectors are kept in slabs of whole documents in catalog order. When
documents are committed while the process runs, :meth:`refresh` appends a
slab for them; a removal or replacement rebuilds. Only committed documents
are ever read (the catalog lists nothing else).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from loguru import logger

from ragged.gpu.device_manager import DeviceManager
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.types import DeviceInfo
from ragged.index.catalog import Catalog, table_version
from ragged.index.search import Block, SegmentSource, split_blocks
from ragged.index.store import IndexStore

RESIDENT_SHARE = 0.5  # of the device's batch budget the resident copy may take


class ResidentIndex:
    """The index's page vectors held for fast, repeated search."""

    def __init__(self, store: IndexStore, device: DeviceInfo, manager: DeviceManager,
                 policy: MemoryPolicy | None = None) -> None:
        self.store = store
        self.device = device
        self.manager = manager
        self.policy = policy or MemoryPolicy()
        self._catalog = Catalog([], [])
        self._slabs: list[Block] = []  # f32 columns on the CPU; fp16 rows on a device
        self._streamed: SegmentSource | None = None
        self.version: int | None = None
        self.form = "streamed"
        self.memory_bytes = 0
        self.refresh(force=True)

    @property
    def catalog(self) -> Catalog:
        """The pages held (committed pages only)."""
        return self._catalog

    def _dim(self) -> int:
        assert self.store.meta is not None
        return self.store.meta.dim

    def _choose_form(self, vectors: int) -> str:
        element = 2 if self.device.is_accelerator else 4
        need = vectors * self._dim() * element
        budget = self.policy.batch_budget(self.manager.try_memory_info(self.device))
        if budget is None or need > budget * RESIDENT_SHARE:
            return "streamed"
        return f"fp16 on {self.device.label}" if self.device.is_accelerator else "f32 in RAM"

    def refresh(self, force: bool = False) -> bool:
        """Take in what was committed since the last look; True when anything changed."""
        version = table_version(self.store.table_folder)
        if not force and version == self.version:
            return False
        store = IndexStore(self.store.folder, self.store.meta)  # a fresh look at the table
        catalog = store.catalog()
        old = self._catalog
        form = self._choose_form(catalog.total_vectors)
        appended = (form == self.form and form != "streamed" and len(catalog.pages) >= len(old.pages)
                    and catalog.pages[: len(old.pages)] == old.pages)
        self.store, self.version = store, version
        if form == "streamed":
            self._slabs, self._streamed = [], SegmentSource(store, catalog)
        elif appended:
            if len(catalog.pages) > len(old.pages):
                self._slabs.append(self._load(catalog, len(old.pages)))
        else:
            self._streamed = None
            self._slabs = [self._load(catalog, 0)] if catalog.pages else []
        changed = force or catalog.pages != old.pages or form != self.form
        self._catalog, self.form = catalog, form
        self.memory_bytes = sum(int(s.vectors.element_size() * s.vectors.numel()) if isinstance(s.vectors,
                                torch.Tensor) else int(s.vectors.nbytes) for s in self._slabs)
        if changed:
            logger.info("Index: {} pages held as {} ({:.0f} MiB)", len(catalog.pages), self.form,
                        self.memory_bytes / 2**20)
        return changed

    def _load(self, catalog: Catalog, first: int) -> Block:
        """The vectors of pages ``first:`` in the resident form."""
        source = SegmentSource(self.store, Catalog(catalog.pages[first:], catalog.documents, catalog.extents,
                                                   catalog.lance_version))
        lengths = np.array([p.n_vectors for p in catalog.pages[first:]], dtype=np.int64)
        total = int(lengths.sum())
        if self.device.is_accelerator:
            rows = torch.empty((total, self._dim()), dtype=torch.float16, device=self.device.torch_device)
            target: torch.Tensor = rows
        else:
            columns = np.empty((self._dim(), total), dtype=np.float32)  # (dim, n)
            target = torch.from_numpy(columns).t()  # (n, dim) view: filled row by row
        at = 0
        for block in source.blocks(2**62):
            vectors = block.vectors
            assert isinstance(vectors, np.ndarray)
            n = vectors.shape[0]
            target[at : at + n].copy_(torch.from_numpy(np.asarray(vectors)))  # fp16 -> the resident dtype
            at += n
        if self.device.is_accelerator:
            return Block(first, lengths, rows, columns=False)
        return Block(first, lengths, columns, columns=True)

    def blocks(self, max_vectors: int) -> Iterator[Block]:
        """Blocks of whole pages, at most ``max_vectors`` each, in catalog order."""
        if self._streamed is not None:
            yield from self._streamed.blocks(max_vectors)
            return
        for slab in self._slabs:
            yield from split_blocks(slab.first, slab.lengths, slab.vectors, max_vectors, slab.columns)

    def release(self) -> None:
        """Drop the resident vectors (their memory goes back)."""
        self._slabs, self._streamed, self.memory_bytes = [], None, 0
