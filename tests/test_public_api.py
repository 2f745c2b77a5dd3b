"""The public surface is pinned: names the spec fixes stay importable, and
importing ragged is cheap and has no side effects."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import pytest

import ragged.gpu as gpu
from ragged import errors

SPEC_NAMES = {
    "DeviceManager": ("get_optimal_device", "get_device_memory_info", "clear_cache"),
    "MemoryMonitor": ("take_snapshot", "get_recommended_batch_size"),
    "OOMHandler": ("run", "plan"),
    "AdaptiveBatchSizer": ("calculate_batch_size", "adjust_batch_size"),
}


def test_gpu_exports_are_pinned() -> None:
    assert set(gpu.__all__) == {
        "AdaptiveBatchSizer", "AllocatorCounters", "BatchMeasurement", "BatchRunner", "BatchSizeConfig",
        "CPUBackend", "CUDABackend", "DeviceBackend", "DeviceInfo", "DeviceManager", "DeviceProperties",
        "DeviceType", "ItemFailure", "MPSBackend", "ManagedBatchJob", "MemoryFit", "MemoryInfo", "MemoryLevel",
        "MemoryMonitor", "MemoryPolicy", "MemorySnapshot", "ModelManager", "OOMHandler", "OOMStats", "Placement",
        "ProcessMemory", "ROCmBackend", "Recovery", "RecoveryOptions", "RecoveryStep", "RecoveryStrategy",
        "RunStats", "Runtime", "Stages", "XPUBackend", "default_device_manager", "is_oom_error", "memory_budget",
        "parse_device_hint", "plan_batch_size", "register_backend", "with_oom_handling",
    }
    for name in gpu.__all__:  # each is defined inside ragged.gpu, not re-exported from elsewhere
        assert getattr(gpu, name).__module__.startswith("ragged.gpu"), name


def test_spec_names_and_methods() -> None:
    """The spec's classes, methods and module paths, as the spec spells them."""
    from ragged.embeddings import ColPaliEmbedder
    from ragged.gpu import batch_sizer, device_manager, memory_monitor, oom_handler

    for cls, methods in SPEC_NAMES.items():
        for method in methods:
            assert callable(getattr(getattr(gpu, cls), method)), f"{cls}.{method}"
    assert callable(ColPaliEmbedder.embed_batch)
    assert "enable_adaptive_batching" in inspect.signature(ColPaliEmbedder).parameters
    pairs = {
        device_manager: ("DeviceManager", "DeviceType", "DeviceInfo"),
        memory_monitor: ("MemoryMonitor", "MemorySnapshot"),
        oom_handler: ("OOMHandler", "is_oom_error", "with_oom_handling"),
        batch_sizer: ("AdaptiveBatchSizer", "BatchSizeConfig"),
    }
    for module, names in pairs.items():
        for name in names:
            assert getattr(module, name) is getattr(gpu, name), f"{module.__name__}.{name}"


def test_one_exception_tree_drawn_in_its_docstring() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if c.__module__ == errors.__name__]
    assert len(classes) > 10
    for cls in classes:
        assert issubclass(cls, errors.RaggedError), cls
        assert cls.__name__ in (errors.__doc__ or ""), f"{cls.__name__} is missing from the tree"


def test_import_has_no_side_effects() -> None:
    code = (
        "import ragged.gpu, ragged.embeddings, ragged.cli.main, torch;"
        "from ragged.gpu.device_manager import _detected;"
        "print(_detected.cache_info().currsize, torch.cuda.is_initialized())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "False"] and out.stderr == ""  # no detection, no CUDA context, no output


HEAVY = ("torch", "transformers", "lancedb", "pyarrow")


@pytest.mark.parametrize("module", ["ragged.gpu", "ragged.gpu.types", "ragged.gpu.registry", "ragged.gpu.policy",
                                    "ragged.query", "ragged.query.modes", "ragged.index.results"])
def test_light_modules_do_not_load_torch(module: str) -> None:
    code = f"import sys, json, {module}; print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout) == []


def loaded_after(args: list[str]) -> set[str]:
    code = (
        "import sys, json\n"
        "from ragged.cli.main import cli\n"
        "try:\n"
        f"    cli({args!r}, prog_name='ragged')\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


@pytest.mark.parametrize(("args", "allowed"), [
    (["--help"], set()),
    (["--version"], set()),
    (["ingest", "--help"], set()),
    (["gpu", "list", "--json"], {"torch"}),
])
def test_light_commands_import_nothing_heavy(args: list[str], allowed: set[str]) -> None:
    assert loaded_after(args) <= allowed
