"""Any torch model as a managed batch job: placement, sizing, recovery.

:class:`ManagedBatchJob` runs one model under a
:class:`~ragged.gpu.runtime.Runtime`: the device is resolved once from the
hint (an explicit device is honoured or refused; only ``auto`` may fall
back to the CPU), the model is admitted and loaded by the runtime's
:class:`~ragged.gpu.model_manager.ModelManager` under its
:class:`~ragged.gpu.policy.MemoryPolicy`, batches are sized per kind of work
by the runtime's sizers, and OOMs go through its one
:class:`~ragged.gpu.recovery.OOMHandler`. The vision embedder and the text
embedder are both thin layers over it.

A run returns its results and its figures; nothing of a run is left on the
job. Runs of one job take turns (one model, one batch in flight: the
memory budget assumes it). Reading :attr:`device` never loads anything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from ragged.gpu.batch_runner import BatchFn, BatchRunner, ItemFailure, Stages
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig
from ragged.gpu.device_manager import DeviceHint, parse_device_hint
from ragged.gpu.model_manager import ManagedModel, Placement
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.runtime import Runtime
from ragged.gpu.stats import RunStats
from ragged.gpu.types import DeviceInfo

if TYPE_CHECKING:
    import torch

R = TypeVar("R")

# loader(device, dtype name) -> the model on that device in that dtype
JobLoader = Callable[[DeviceInfo, str], "torch.nn.Module"]
# bytes the model takes on a device in a dtype
JobSize = Callable[[DeviceInfo, str], int]


class ManagedBatchJob:
    """One model under ragged's resource management.

    ``key`` identifies the model's weights (a folder, a hub id); ``name`` is
    its short name for work keys and logs (``tiny-colpali``)."""

    def __init__(
        self,
        key: str,
        loader: JobLoader,
        size: JobSize,
        *,
        runtime: Runtime,
        name: str | None = None,
        device: DeviceHint = None,
        dtype: str | None = None,
        batch_config: BatchSizeConfig | None = None,
        prefetch: bool | None = None,
    ) -> None:
        self.runtime = runtime
        self.auto_device = parse_device_hint(device) is None
        self.requested_device = runtime.device(device)
        self.dtype = dtype or runtime.device_manager.compute_dtype(self.requested_device)
        self.batch_config = replace(batch_config or runtime.batch_config, policy=runtime.policy)  # one policy
        self.key = f"{key}|{self.dtype}"  # the same model in another dtype is another model
        self.name = name or key
        self.work_bytes = 0  # what one item's work needs beside the model (set by the embedder)
        self.prior_bytes_per_load: float | None = None  # the sizer's prior before any measurement
        self.prefetch = prefetch  # prepare the next batch while the device computes; None: on accelerators
        self._loader = loader
        self._size = size
        self._turn = threading.Lock()
        self.placement: Placement | None = None  # where the latest load put the model

    @property
    def policy(self) -> MemoryPolicy:
        """The memory policy of this job's batches and loads (the runtime's)."""
        return self.runtime.policy

    # -- placement ----------------------------------------------------------

    def dtype_on(self, device: DeviceInfo) -> str:
        """The dtype the model runs in on ``device``."""
        if device.same_device(self.requested_device):
            return self.dtype
        return self.runtime.device_manager.compute_dtype(device)  # the OOM fallback: the CPU's own dtype

    def size_on(self, device: DeviceInfo) -> int:
        """Bytes the model's weights take on ``device``."""
        return self._size(device, self.dtype_on(device))

    @property
    def device(self) -> DeviceInfo:
        """Where the model runs (or will run): the latest placement, else the
        requested device. Reading it never loads the model."""
        return self.placement.device if self.placement is not None else self.requested_device

    def _load_args(self) -> dict[str, Any]:
        return {"key": self.key, "loader": lambda d: self._loader(d, self.dtype_on(d)), "size_bytes": self.size_on,
                "device": self.requested_device, "work_bytes": self.work_bytes,
                "allow_fallback": self.auto_device}

    def model(self) -> Any:
        """The loaded model, loading it (through the manager) if needed."""
        held = self.runtime.model_manager.acquire(**self._load_args())
        self.placement = held.placement
        return held.model

    @property
    def loaded(self) -> bool:
        """True while the model manager holds the model (never waits for a load)."""
        return self.key in self.runtime.model_manager.loaded

    @contextmanager
    def session(self) -> Iterator[ManagedModel]:
        """The model loaded and pinned for a block of work; placement resolved once."""
        with self.runtime.model_manager.holding(**self._load_args()) as held:
            self.placement = held.placement
            yield held

    def model_for(self, device: DeviceInfo) -> Any:
        """The model to compute on ``device``: the main one, or for the OOM
        fallback a CPU copy admitted by the model manager like any model."""
        if device.same_device(self.device):
            return self.model()
        return self.runtime.model_manager.load(
            self._fallback_key, lambda d: self._loader(d, self.dtype_on(d)), self.size_on, device,
            work_bytes=self.work_bytes, allow_fallback=False,
        )

    @property
    def _fallback_key(self) -> str:
        return f"{self.key}|cpu-fallback"

    # -- batches ------------------------------------------------------------

    def work_key(self, work: str) -> str:
        """The runtime's key for this model's ``work`` (sizers and OOM ceilings)."""
        return f"{self.name}/{work}"

    def sizer_for(self, device: DeviceInfo, work: str) -> AdaptiveBatchSizer:
        """The runtime's batch sizer of this model's ``work`` on ``device``."""
        return self.runtime.sizer_for(device, self.work_key(work), config=self.batch_config,
                                      prior_bytes_per_load=self.prior_bytes_per_load)

    def run(
        self,
        costs: Sequence[int],
        process: BatchFn[R] | Stages[Any, R],
        *,
        work: str,
        fixed_batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        keep_going: bool = False,
    ) -> tuple[list[R | ItemFailure], RunStats, Placement | None]:
        """Run ``process`` over items of ``costs`` on the placed model: adaptive
        batches unless ``fixed_batch_size`` is given. Returns the results (in
        the order of ``costs``), the run's figures and where the model ran."""
        with self._turn, self.session() as held:
            device = held.device
            runner: BatchRunner[R] = BatchRunner(
                device,
                None if fixed_batch_size else self.sizer_for(device, work),
                self.runtime.oom_handler,
                monitor=self.runtime.monitor_for(device),
                fixed_batch_size=fixed_batch_size,
                prefetch=self.prefetch,
                work=self.work_key(work),
                prepare_fallback=self.model_for,
                cadence=self.runtime.cadence_for(device, self.work_key(work)) if fixed_batch_size else None,
            )
            results, stats = runner.run(costs, process, on_batch, keep_going=keep_going)
            return results, stats, held.placement

    # -- lifetime -----------------------------------------------------------

    def release_fallback(self) -> None:
        """Unload the CPU copy made for OOM fallbacks, if any."""
        self.runtime.model_manager.unload(self._fallback_key)

    def unload(self) -> None:
        """Unload the model and its CPU copy now (the runtime keeps running)."""
        self.release_fallback()
        self.runtime.model_manager.unload(self.key)
