"""The CUDA and MPS backends' own logic, with torch's device APIs stood in.

The real calls are exercised by the cuda-marked tests on a GPU machine;
here the arithmetic around them (NVML matching by UUID, per-process caps,
unified-memory bounds, bf16 rules) is checked on the CPU.
"""

from __future__ import annotations

import sys
import types
from types import SimpleNamespace

import pytest
import torch

from ragged.gpu import DeviceManager, DeviceType
from ragged.gpu.backends import CPUBackend, CUDABackend, MPSBackend
from ragged.gpu.backends import mps as mps_module

GiB = 1024**3


@pytest.fixture
def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> dict[str, object]:
    """Two visible cards as torch.cuda would report them."""
    state: dict[str, object] = {"fraction": 1.0, "emptied": [], "reset": []}
    cards = [
        SimpleNamespace(name="Card A", total_memory=24 * GiB, major=8, minor=6, uuid="aaaa-1111"),
        SimpleNamespace(name="Card B", total_memory=16 * GiB, major=7, minor=5, uuid="bbbb-2222"),
    ]
    cuda = torch.cuda
    monkeypatch.setattr(cuda, "is_available", lambda: True)
    monkeypatch.setattr(cuda, "device_count", lambda: 2)
    monkeypatch.setattr(cuda, "get_device_properties", lambda i: cards[i])
    monkeypatch.setattr(cuda, "mem_get_info", lambda i: (10 * GiB, cards[i].total_memory))
    monkeypatch.setattr(cuda, "memory_allocated", lambda i: 2 * GiB)
    monkeypatch.setattr(cuda, "memory_reserved", lambda i: 3 * GiB)
    monkeypatch.setattr(cuda, "max_memory_allocated", lambda i: 5 * GiB)
    monkeypatch.setattr(cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(cuda, "get_per_process_memory_fraction", lambda i: state["fraction"])
    monkeypatch.setattr(cuda, "reset_peak_memory_stats", lambda i: state["reset"].append(i))  # type: ignore[attr-defined]
    monkeypatch.setattr(cuda, "empty_cache", lambda: state["emptied"].append(True))  # type: ignore[attr-defined]

    class _Device:
        def __init__(self, index: int) -> None:
            pass

        def __enter__(self) -> None:
            return None

        def __exit__(self, *exc: object) -> None:
            return None

    monkeypatch.setattr(cuda, "device", _Device)
    return state


def fake_nvml(monkeypatch: pytest.MonkeyPatch, free: dict[str, int]) -> None:
    module = types.ModuleType("pynvml")
    module.nvmlInit = lambda: None  # type: ignore[attr-defined]
    module.nvmlDeviceGetHandleByUUID = lambda uuid: uuid  # type: ignore[attr-defined]

    def memory(handle: str) -> SimpleNamespace:
        if handle not in free:
            raise RuntimeError("NVMLError_NotFound")
        return SimpleNamespace(free=free[handle], total=24 * GiB if "aaaa" in handle else 16 * GiB)

    module.nvmlDeviceGetMemoryInfo = memory  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pynvml", module)


def test_cuda_properties_and_counters(fake_cuda: dict[str, object]) -> None:
    backend = CUDABackend()
    assert backend.device_count() == 2
    props = backend.properties(1)
    assert (props.name, props.total_memory, props.compute_capability) == ("Card B", 16 * GiB, (7, 5))
    counters = backend.counters(0)
    assert (counters.allocated, counters.reserved, counters.peak_allocated) == (2 * GiB, 3 * GiB, 5 * GiB)
    backend.reset_peak(1)
    backend.clear_cache(0)
    assert fake_cuda["reset"] == [1] and fake_cuda["emptied"] == [True]
    assert backend.supports_bf16(0) is True and backend.supports_bf16(1) is False


def test_cuda_free_memory_from_nvml_by_uuid(fake_cuda: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, {"GPU-aaaa-1111": 20 * GiB, "GPU-bbbb-2222": 1 * GiB})
    backend = CUDABackend()
    assert backend.memory_info(0).free == 20 * GiB
    assert backend.memory_info(1).free == 1 * GiB
    manager = DeviceManager([backend])
    assert manager.get_optimal_device().label == "cuda:0"  # the card with the most free memory


def test_cuda_falls_back_to_torch_without_nvml(fake_cuda: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, {})  # NVML answers, but knows no such card (e.g. a MIG slice)
    info = CUDABackend().memory_info(0)
    assert (info.total, info.free, info.allocated, info.reserved) == (24 * GiB, 10 * GiB, 2 * GiB, 3 * GiB)


def test_cuda_per_process_cap_is_the_real_limit(fake_cuda: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, {"GPU-aaaa-1111": 20 * GiB})
    fake_cuda["fraction"] = 0.25  # 6 GiB of the 24 GiB card, 3 GiB already reserved
    info = CUDABackend().memory_info(0)
    assert (info.total, info.free) == (6 * GiB, 3 * GiB)


@pytest.fixture
def fake_mps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    monkeypatch.setattr(torch.mps, "recommended_max_memory", lambda: 20 * GiB)
    monkeypatch.setattr(torch.mps, "driver_allocated_memory", lambda: 6 * GiB)
    monkeypatch.setattr(torch.mps, "current_allocated_memory", lambda: 4 * GiB)
    monkeypatch.setattr(mps_module.psutil, "virtual_memory", lambda: SimpleNamespace(available=8 * GiB))


def test_mps_readings_are_real_numbers(fake_mps: None) -> None:
    backend = MPSBackend()
    info = backend.memory_info(0)
    # Free is the smaller of the working set left (14 GiB) and the RAM the OS has (8 GiB).
    assert (info.total, info.free, info.allocated, info.reserved) == (20 * GiB, 8 * GiB, 4 * GiB, 6 * GiB)
    counters = backend.counters(0)
    assert counters.peak_allocated is None and counters.reserved == 6 * GiB
    assert DeviceManager([backend]).get_optimal_device("mps").device_type is DeviceType.MPS


@pytest.mark.parametrize(("release", "bf16"), [("14.2", True), ("13.6", False), ("", False)])
def test_mps_bf16_needs_macos_14(monkeypatch: pytest.MonkeyPatch, release: str, bf16: bool) -> None:
    monkeypatch.setattr(mps_module.platform, "mac_ver", lambda: (release, ("", "", ""), ""))
    assert MPSBackend().supports_bf16(0) is bf16


@pytest.mark.mps
def test_real_mps_reading() -> None:
    manager = DeviceManager()
    info = manager.get_device_memory_info(manager.get_optimal_device("mps"))
    assert info.total > 0 and 0 <= info.free <= info.total


def test_cuda_lists_processes_through_nvml(fake_cuda: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    fake_nvml(monkeypatch, {"GPU-aaaa-1111": 20 * GiB})
    import pynvml

    running = [SimpleNamespace(pid=1, usedGpuMemory=GiB), SimpleNamespace(pid=2, usedGpuMemory=3 * GiB)]
    monkeypatch.setattr(pynvml, "nvmlDeviceGetComputeRunningProcesses", lambda handle: running, raising=False)
    procs = CUDABackend().processes(0)
    assert procs is not None and [(p.pid, p.used_bytes) for p in procs] == [(2, 3 * GiB), (1, GiB)]
    assert CUDABackend().compute_dtype(0) == "bfloat16" and CUDABackend().compute_dtype(1) == "float16"


@pytest.fixture
def fake_rocm(fake_cuda: dict[str, object], monkeypatch: pytest.MonkeyPatch) -> None:
    """A ROCm build: torch.version.hip is set and cards carry gfx names."""
    monkeypatch.setattr(torch.version, "hip", "6.2.41133", raising=False)
    cards = [SimpleNamespace(name="AMD Instinct MI250X", total_memory=64 * GiB, major=9, minor=0,
                             gcnArchName="gfx90a:sramecc+:xnack-"),
             SimpleNamespace(name="Radeon Pro W6800", total_memory=32 * GiB, major=10, minor=3,
                             gcnArchName="gfx1030")]
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: cards[i])


def test_rocm_names_chips_by_gfx_target_and_owns_the_bf16_rule(fake_rocm: None) -> None:
    from ragged.gpu.backends import ROCmBackend, default_backends

    rocm = ROCmBackend()
    assert rocm.is_available() and not CUDABackend().is_available()  # one build, one backend
    assert rocm.properties(0).arch == "gfx90a" and rocm.properties(0).compute_capability is None
    assert (rocm.supports_bf16(0), rocm.supports_bf16(1)) == (True, False)
    assert (rocm.compute_dtype(0), rocm.compute_dtype(1)) == ("bfloat16", "float16")
    assert rocm.memory_info(0).free == 10 * GiB  # from the HIP runtime (fake_cuda's mem_get_info)
    manager = DeviceManager(default_backends())
    assert [d.label for d in manager.devices][:2] == ["cuda:0", "cuda:1"]
    assert manager.devices[0].arch == "gfx90a"
    assert isinstance(manager.backend_for(manager.devices[0]), ROCmBackend)


def test_xpu_backend_answers_through_torch_xpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each question goes to torch.xpu for the right card, and the answers
    drive selection: auto takes the card with most free memory."""
    from ragged.gpu.backends import XPUBackend

    free = {0: 4 * GiB, 1: 12 * GiB}
    calls: list[tuple[str, int]] = []

    def reading(name: str, value: object):  # type: ignore[no-untyped-def]
        def read(i: int) -> object:
            calls.append((name, i))
            return value(i) if callable(value) else value

        return read

    xpu = SimpleNamespace(
        is_available=lambda: True, device_count=lambda: 2,
        get_device_properties=lambda i: SimpleNamespace(name=f"Intel Arc {i}", total_memory=16 * GiB, device_id=86),
        mem_get_info=reading("mem_get_info", lambda i: (free[i], 16 * GiB)),
        memory_allocated=reading("memory_allocated", lambda i: (i + 1) * GiB),
        memory_reserved=reading("memory_reserved", lambda i: (i + 2) * GiB),
        max_memory_allocated=reading("max_memory_allocated", lambda i: (i + 3) * GiB),
        reset_peak_memory_stats=reading("reset_peak_memory_stats", None),
        empty_cache=lambda: calls.append(("empty_cache", -1)),
    )
    monkeypatch.setattr(torch, "xpu", xpu, raising=False)
    manager = DeviceManager([XPUBackend(), CPUBackend()])
    assert [d.label for d in manager.devices] == ["xpu:0", "xpu:1", "cpu"]
    best = manager.get_optimal_device()
    assert best.label == "xpu:1" and best.name == "Intel Arc 1" and best.arch == "86"
    info = manager.get_device_memory_info(best)
    assert (info.free, info.allocated, info.reserved) == (12 * GiB, 2 * GiB, 3 * GiB)
    counters = manager.counters(best)
    assert (counters.allocated, counters.reserved, counters.peak_allocated) == (2 * GiB, 3 * GiB, 4 * GiB)
    calls.clear()
    manager.reset_peak(best)
    manager.clear_cache(best)
    assert calls == [("reset_peak_memory_stats", 1), ("empty_cache", -1)]
    assert manager.compute_dtype(best) == "bfloat16"
    monkeypatch.delattr(torch, "xpu")  # a torch build without XPU support
    assert XPUBackend().is_available() is False
    assert [d.label for d in DeviceManager([XPUBackend(), CPUBackend()]).devices] == ["cpu"]


def test_real_cpu_peak_sees_many_small_tensors() -> None:
    """Freed heap memory stays resident; without handing it back first, a
    batch of small tensors read as a 0-byte peak."""
    from ragged.gpu.batch_sizer import measured_peak

    backend = CPUBackend()
    warm = [torch.ones(64, 64) for _ in range(3000)]  # ~48 MiB of 16 KiB tensors, then freed
    del warm
    backend.reset_peak(0)
    before = backend.counters(0)
    if before.peak_allocated is None:
        pytest.skip("no resettable peak RSS on this OS")
    batch = [torch.ones(64, 64) for _ in range(2000)]  # ~31 MiB that fits in the freed heap
    peak = measured_peak(before, backend.counters(0))
    del batch
    assert peak is not None and peak > 20 * 1024**2
