"""Any torch model as a managed batch job: placement, sizing, recovery.

:class:`ManagedBatchJob` wires the parts of :mod:`ragged.gpu` together for
one model: the device is resolved once from the hint (an explicit device is
honoured or refused; only ``auto`` may fall back to the CPU), the model is
admitted and loaded by the :class:`~ragged.gpu.model_manager.ModelManager`
under the :class:`~ragged.gpu.policy.MemoryPolicy`, batches are sized per
kind of work by an :class:`~ragged.gpu.batch_sizer.AdaptiveBatchSizer`, and
OOMs go through the one :class:`~ragged.gpu.oom_handler.OOMHandler`. The
vision embedder and the text embedder are both thin layers over it.

Reading :attr:`device` or :attr:`placement` never loads anything; only
:meth:`model` and :meth:`run` do, and the placement they resolve is
recorded for the report.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any, TypeVar

from ragged.gpu.batch_runner import BatchFn, BatchRunner, ItemFailure, RunStats, Stages
from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig
from ragged.gpu.device_manager import DeviceHint, DeviceManager, default_device_manager, parse_device_hint
from ragged.gpu.memory_monitor import MemoryMonitor
from ragged.gpu.model_manager import ManagedModel, ModelManager, Placement
from ragged.gpu.oom_handler import OOMHandler
from ragged.gpu.policy import MemoryPolicy
from ragged.gpu.types import DeviceInfo

if TYPE_CHECKING:
    import torch

R = TypeVar("R")

# loader(device, dtype name) -> the model on that device in that dtype
JobLoader = Callable[[DeviceInfo, str], "torch.nn.Module"]
# bytes the model takes on a device in a dtype
JobSize = Callable[[DeviceInfo, str], int]

class ManagedBatchJob:
    """One model under ragged's resource management."""

    def __init__(
        self,
        key: str,
        loader: JobLoader,
        size: JobSize,
        *,
        device: DeviceHint = None,
        dtype: str | None = None,
        device_manager: DeviceManager | None = None,
        model_manager: ModelManager | None = None,
        policy: MemoryPolicy | None = None,
        batch_config: BatchSizeConfig | None = None,
        oom_handler: OOMHandler | None = None,
        prefetch: bool | None = None,
    ) -> None:
        self.device_manager = device_manager or default_device_manager()
        self.auto_device = parse_device_hint(device) is None
        self.requested_device = self.device_manager.get_optimal_device(device)
        self.dtype = dtype or self.device_manager.compute_dtype(self.requested_device)
        config = batch_config or BatchSizeConfig()
        self.batch_config = replace(config, policy=policy) if policy is not None else config  # one policy
        self.model_manager = model_manager or ModelManager(self.device_manager, idle_timeout_s=None,
                                                           policy=self.policy)
        self._owns_model_manager = model_manager is None
        self.oom_handler = oom_handler or OOMHandler(self.device_manager)
        self.key = f"{key}|{self.dtype}"  # the same model in another dtype is another model
        self.work_bytes = 0  # what one item's work needs beside the model (set by the embedder)
        self.prior_bytes_per_load: float | None = None  # the sizer's prior before any measurement
        self.prefetch = prefetch  # prepare the next batch while the device computes; None: on accelerators
        self._loader = loader
        self._size = size
        self._sizers: dict[tuple[str, str], AdaptiveBatchSizer] = {}
        self._monitors: dict[str, MemoryMonitor] = {}
        self.placement: Placement | None = None  # resolved by the latest load

    @property
    def policy(self) -> MemoryPolicy:
        """The memory policy of this job's batches and loads."""
        return self.batch_config.policy

    # -- placement ----------------------------------------------------------

    def dtype_on(self, device: DeviceInfo) -> str:
        """The dtype the model runs in on ``device``."""
        if device.same_device(self.requested_device):
            return self.dtype
        return self.device_manager.compute_dtype(device)  # the OOM fallback: the CPU's own dtype

    def size_on(self, device: DeviceInfo) -> int:
        """Bytes the model's weights take on ``device``."""
        return self._size(device, self.dtype_on(device))

    @property
    def device(self) -> DeviceInfo:
        """Where the model runs (or will run): the latest placement, else the
        requested device. Reading it never loads the model."""
        return self.placement.device if self.placement is not None else self.requested_device

    def _acquire(self) -> ManagedModel:
        held = self.model_manager.acquire(
            self.key, lambda d: self._loader(d, self.dtype_on(d)), self.size_on, self.requested_device,
            work_bytes=self.work_bytes, allow_fallback=self.auto_device,
        )
        self.placement = held.placement
        return held

    def model(self) -> Any:
        """The loaded model, loading it (through the manager) if needed."""
        return self._acquire().model

    @property
    def loaded(self) -> bool:
        """True while the model manager holds the model."""
        return self.key in self.model_manager.loaded

    @contextmanager
    def session(self) -> Iterator[ManagedModel]:
        """The model loaded and pinned for a block of work; placement resolved once."""
        with self.model_manager.holding(
            self.key, lambda d: self._loader(d, self.dtype_on(d)), self.size_on, self.requested_device,
            work_bytes=self.work_bytes, allow_fallback=self.auto_device,
        ) as held:
            self.placement = held.placement
            yield held

    def model_for(self, device: DeviceInfo) -> Any:
        """The model to compute on ``device``: the main one, or for the OOM
        fallback a CPU copy admitted by the model manager like any model."""
        if device.same_device(self.device):
            return self._acquire().model
        return self.model_manager.load(
            self._fallback_key, lambda d: self._loader(d, self.dtype_on(d)), self.size_on, device,
            work_bytes=self.work_bytes, allow_fallback=False,
        )

    @property
    def _fallback_key(self) -> str:
        return f"{self.key}|cpu-fallback"

    # -- batches ------------------------------------------------------------

    def monitor_for(self, device: DeviceInfo) -> MemoryMonitor:
        """The memory monitor of ``device`` (kept for the job's life)."""
        if device.label not in self._monitors:
            self._monitors[device.label] = MemoryMonitor(device, self.device_manager, policy=self.policy)
        return self._monitors[device.label]

    def sizer_for(self, device: DeviceInfo, work: str) -> AdaptiveBatchSizer:
        """The batch sizer of ``work`` on ``device``; it lives as long as the
        job, so what one call measures sizes the next call's batches."""
        key = (device.label, work)
        if key not in self._sizers:
            self._sizers[key] = AdaptiveBatchSizer(
                device, self.monitor_for(device), self.batch_config, self.device_manager,
                prior_bytes_per_load=self.prior_bytes_per_load, oom_handler=self.oom_handler, work=work,
            )
        return self._sizers[key]

    def run(
        self,
        costs: Sequence[int],
        process: BatchFn[R] | Stages[Any, R],
        *,
        work: str,
        fixed_batch_size: int | None = None,
        on_batch: Callable[[int], None] | None = None,
        keep_going: bool = False,
    ) -> tuple[list[R | ItemFailure], RunStats]:
        """Run ``process`` over items of ``costs`` on the placed model: adaptive
        batches unless ``fixed_batch_size`` is given."""
        with self.session() as held:
            device = held.device
            runner: BatchRunner[R] = BatchRunner(
                device,
                None if fixed_batch_size else self.sizer_for(device, work),
                self.oom_handler,
                monitor=self.monitor_for(device),
                fixed_batch_size=fixed_batch_size,
                prefetch=self.prefetch,
                work=work,
                prepare_fallback=self.model_for,
            )
            return runner.run(costs, process, on_batch, keep_going=keep_going)

    # -- lifetime -----------------------------------------------------------

    def release_fallback(self) -> None:
        """Unload the CPU copy made for OOM fallbacks, if any."""
        self.model_manager.unload(self._fallback_key)

    def close(self) -> None:
        """Release the model if this job owns its model manager; a shared
        manager keeps it for other users and unloads it when idle."""
        self.release_fallback()
        if self._owns_model_manager:
            self.model_manager.close()

