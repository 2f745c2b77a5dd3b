"""GPU resource management: devices, memory, OOM recovery, batch sizing.

Everything here is hardware-agnostic above the backend seam
(:mod:`ragged.gpu.backends`), so it runs and is tested on a CPU-only machine.
"""

from ragged.gpu.backends import CPUBackend, CUDABackend, DeviceBackend, DeviceProperties, MPSBackend
from ragged.gpu.batch_runner import BatchRunner, RunStats, Stages
from ragged.gpu.batch_sizer import (
    AdaptiveBatchSizer,
    BatchMeasurement,
    BatchSizeConfig,
    MemoryFit,
    memory_budget,
    plan_batch_size,
)
from ragged.gpu.device_manager import DeviceManager, default_device_manager, parse_device_hint
from ragged.gpu.memory_monitor import MemoryLevel, MemoryMonitor, MemorySnapshot
from ragged.gpu.oom_detection import is_oom_error
from ragged.gpu.oom_handler import (
    OOMHandler,
    OOMStats,
    RecoveryStep,
    RecoveryStrategy,
    with_oom_handling,
)
from ragged.gpu.types import AllocatorCounters, DeviceInfo, DeviceType, MemoryInfo

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
    "MPSBackend",
    "MemoryFit",
    "MemoryInfo",
    "MemoryLevel",
    "MemoryMonitor",
    "MemorySnapshot",
    "OOMHandler",
    "OOMStats",
    "RecoveryStep",
    "RecoveryStrategy",
    "RunStats",
    "Stages",
    "default_device_manager",
    "is_oom_error",
    "memory_budget",
    "parse_device_hint",
    "plan_batch_size",
    "with_oom_handling",
]
