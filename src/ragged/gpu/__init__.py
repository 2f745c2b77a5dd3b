"""GPU resource management: devices, memory, OOM recovery, batch sizing,
model lifecycle.

Everything here is hardware-agnostic above the backend seam
(:mod:`ragged.gpu.backends`), so it runs and is tested on a CPU-only
machine. One :class:`MemoryPolicy` decides how much memory may be used,
one :class:`OOMHandler` recovers from running out of it, and one
:class:`ModelManager` holds the models; :class:`ManagedBatchJob` wires them
together for any torch model.
"""

from ragged.gpu.backends import (
    CPUBackend,
    CUDABackend,
    DeviceBackend,
    DeviceProperties,
    MPSBackend,
    ROCmBackend,
    XPUBackend,
)
from ragged.gpu.batch_runner import BatchRunner, ItemFailure, RunStats, Stages
from ragged.gpu.batch_sizer import (
    AdaptiveBatchSizer,
    BatchMeasurement,
    BatchSizeConfig,
    MemoryFit,
    memory_budget,
    plan_batch_size,
)
from ragged.gpu.device_manager import DeviceManager, default_device_manager, parse_device_hint
from ragged.gpu.managed import ManagedBatchJob
from ragged.gpu.memory_monitor import MemoryMonitor, MemorySnapshot
from ragged.gpu.model_manager import ModelManager, Placement
from ragged.gpu.oom_detection import is_oom_error
from ragged.gpu.oom_handler import (
    OOMHandler,
    OOMStats,
    Recovery,
    RecoveryStep,
    RecoveryStrategy,
    with_oom_handling,
)
from ragged.gpu.policy import MemoryLevel, MemoryPolicy
from ragged.gpu.types import AllocatorCounters, DeviceInfo, DeviceType, MemoryInfo, ProcessMemory

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
    "RecoveryStep",
    "RecoveryStrategy",
    "RunStats",
    "Stages",
    "XPUBackend",
    "default_device_manager",
    "is_oom_error",
    "memory_budget",
    "parse_device_hint",
    "plan_batch_size",
    "with_oom_handling",
]
