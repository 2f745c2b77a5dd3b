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
    """The spec's module paths name the same objects the package exports."""
    from ragged.gpu import batch_sizer, device_manager, memory_monitor, oom_handler

    pairs = {
        device_manager: ("DeviceManager", "DeviceType", "DeviceInfo"),
        memory_monitor: ("MemoryMonitor", "MemorySnapshot"),
        oom_handler: ("OOMHandler", "is_oom_error", "with_oom_handling"),
        batch_sizer: ("AdaptiveBatchSizer", "BatchSizeConfig"),
    }
    for module, names in pairs.items():
        for name in names:
            assert getattr(module, name) is getattr(gpu, name), f"{module.__name__}.{name}"


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
