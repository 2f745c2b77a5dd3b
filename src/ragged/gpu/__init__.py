"""GPU resource management: devices, memory, OOM recovery, batch sizing,
model lifecycle.

Everything here is hardware-agnostic above the backend seam
(:mod:`ragged.gpu.backends`, registered in :mod:`ragged.gpu.registry`), so
it runs and is tested on a CPU-only machine. One :class:`Runtime`, built
once at each entry point and passed down, owns the parts: the
:class:`DeviceManager`, the one :class:`MemoryPolicy`, the one
:class:`OOMHandler`, the :class:`ModelManager` and the batch sizers.
:class:`ManagedBatchJob` runs any torch model under it. The specification's
own calls that the engine does not need (``calculate_batch_size``,
``adjust_batch_size``, ``get_recommended_batch_size``, ``memory_budget``,
``with_oom_handling``) are a thin layer in :mod:`ragged.gpu.compat`.

Names are imported on first use, so ``import ragged.gpu.types`` (or this
package) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragged.gpu.backends import (
        CPUBackend,
        CUDABackend,
        DeviceBackend,
        DeviceProperties,
        MPSBackend,
        ROCmBackend,
        XPUBackend,
    )
    from ragged.gpu.batch_runner import BatchRunner, ItemFailure, Stages
    from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchMeasurement, BatchSizeConfig, MemoryFit
    from ragged.gpu.compat import memory_budget, with_oom_handling
    from ragged.gpu.device_manager import DeviceManager, default_device_manager, parse_device_hint
    from ragged.gpu.managed import ManagedBatchJob
    from ragged.gpu.memory_monitor import MemoryMonitor, MemorySnapshot
    from ragged.gpu.model_manager import ModelManager, Placement
    from ragged.gpu.oom_detection import is_oom_error
    from ragged.gpu.planning import plan_batch_size
    from ragged.gpu.policy import MemoryLevel, MemoryPolicy
    from ragged.gpu.recovery import OOMHandler, Recovery, RecoveryOptions, RecoveryStep, RecoveryStrategy
    from ragged.gpu.registry import register_backend
    from ragged.gpu.runtime import Runtime
    from ragged.gpu.stats import OOMStats, RunStats
    from ragged.gpu.types import AllocatorCounters, DeviceInfo, DeviceType, MemoryInfo, ProcessMemory

_WHERE = {
    "AdaptiveBatchSizer": "batch_sizer",
    "AllocatorCounters": "types",
    "BatchMeasurement": "batch_sizer",
    "BatchRunner": "batch_runner",
    "BatchSizeConfig": "batch_sizer",
    "CPUBackend": "backends",
    "CUDABackend": "backends",
    "DeviceBackend": "backends",
    "DeviceInfo": "types",
    "DeviceManager": "device_manager",
    "DeviceProperties": "backends",
    "DeviceType": "types",
    "ItemFailure": "batch_runner",
    "MPSBackend": "backends",
    "ManagedBatchJob": "managed",
    "MemoryFit": "batch_sizer",
    "MemoryInfo": "types",
    "MemoryLevel": "policy",
    "MemoryMonitor": "memory_monitor",
    "MemoryPolicy": "policy",
    "MemorySnapshot": "memory_monitor",
    "ModelManager": "model_manager",
    "OOMHandler": "recovery",
    "OOMStats": "stats",
    "Placement": "model_manager",
    "ProcessMemory": "types",
    "ROCmBackend": "backends",
    "Recovery": "recovery",
    "RecoveryOptions": "recovery",
    "RecoveryStep": "recovery",
    "RecoveryStrategy": "recovery",
    "RunStats": "stats",
    "Runtime": "runtime",
    "Stages": "batch_runner",
    "XPUBackend": "backends",
    "default_device_manager": "device_manager",
    "is_oom_error": "oom_detection",
    "memory_budget": "compat",
    "parse_device_hint": "device_manager",
    "plan_batch_size": "planning",
    "register_backend": "registry",
    "with_oom_handling": "compat",
}

__all__ = [
    "AdaptiveBatchSizer",
    "AllocatorCounters",
    "BatchMeasurement",
    "BatchRunner",
    "BatchSizeConfig",
    "CPUBackend",
    "CUDABackend",
    "DeviceBackend",
    "DeviceInfo",
    "DeviceManager",
    "DeviceProperties",
    "DeviceType",
    "ItemFailure",
    "MPSBackend",
    "ManagedBatchJob",
    "MemoryFit",
    "MemoryInfo",
    "MemoryLevel",
    "MemoryMonitor",
    "MemoryPolicy",
    "MemorySnapshot",
    "ModelManager",
    "OOMHandler",
    "OOMStats",
    "Placement",
    "ProcessMemory",
    "ROCmBackend",
    "Recovery",
    "RecoveryOptions",
    "RecoveryStep",
    "RecoveryStrategy",
    "RunStats",
    "Runtime",
    "Stages",
    "XPUBackend",
    "default_device_manager",
    "is_oom_error",
    "memory_budget",
    "parse_device_hint",
    "plan_batch_size",
    "register_backend",
    "with_oom_handling",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ragged.gpu' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"ragged.gpu.{_WHERE[name]}"), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE))
