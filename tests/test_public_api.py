"""The public surface is pinned: names the spec fixes stay importable."""

from __future__ import annotations

import ragged.gpu as gpu
from ragged import errors


def test_gpu_exports_are_pinned() -> None:
    assert set(gpu.__all__) == {
        "AdaptiveBatchSizer", "AllocatorCounters", "BatchMeasurement", "BatchRunner", "BatchSizeConfig",
        "CPUBackend", "CUDABackend", "DeviceBackend", "DeviceInfo", "DeviceManager", "DeviceProperties",
        "DeviceType", "MPSBackend", "MemoryFit", "MemoryInfo", "MemoryLevel", "MemoryMonitor",
        "MemorySnapshot", "OOMHandler", "OOMStats", "RecoveryStep", "RecoveryStrategy", "RunStats", "Stages",
        "default_device_manager", "is_oom_error", "memory_budget", "parse_device_hint", "plan_batch_size",
        "with_oom_handling",
    }
    for name in gpu.__all__:
        assert getattr(gpu, name) is not None


def test_spec_module_paths() -> None:
    from ragged.gpu.batch_sizer import AdaptiveBatchSizer, BatchSizeConfig
    from ragged.gpu.device_manager import DeviceManager, DeviceType
    from ragged.gpu.memory_monitor import MemoryMonitor, MemorySnapshot
    from ragged.gpu.oom_handler import OOMHandler, is_oom_error, with_oom_handling

    assert {DeviceManager, DeviceType, MemoryMonitor, MemorySnapshot, OOMHandler, AdaptiveBatchSizer,
            BatchSizeConfig} and callable(is_oom_error) and callable(with_oom_handling)


def test_one_exception_tree() -> None:
    leaves = [errors.DeviceUnavailableError, errors.OutOfMemoryRecoveryError, errors.UnknownModelError,
              errors.ModelMismatchError, errors.CorruptDocumentError, errors.EncryptedDocumentError,
              errors.EmptyDocumentError, errors.ImageTooLargeError, errors.UnsupportedFileError,
              errors.IndexStoreError, errors.EmptyQueryError, errors.ConfigurationError]
    assert all(issubclass(leaf, errors.RaggedError) for leaf in leaves)


def test_import_has_no_side_effects_on_cuda() -> None:
    import subprocess
    import sys

    code = "import ragged.gpu, ragged.embeddings, torch; print(torch.cuda.is_initialized())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False" and out.stderr == ""
