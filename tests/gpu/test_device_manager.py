"""Device detection and selection, through fake backends and the real CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from ragged.errors import DeviceUnavailableError
from ragged.gpu import DeviceInfo, DeviceManager, DeviceType, MemoryInfo, parse_device_hint
from ragged.gpu.backends import CPUBackend, CUDABackend
from ragged.gpu.backends.cuda import _NVML
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu


def two_gpus_and_mps() -> DeviceManager:
    cuda = FakeBackend(
        kind=DeviceType.CUDA,
        cards=[FakeCard(name="A", total=24 * GiB, others=20 * GiB), FakeCard(name="B", total=16 * GiB)],
    )
    mps = FakeBackend(kind=DeviceType.MPS, cards=[FakeCard(name="M", total=32 * GiB, compute_capability=None)])
    return DeviceManager([cuda, mps, fake_cpu()])


class TestDetection:
    def test_real_detection_matches_what_torch_reports(self) -> None:
        """Every registered kind's devices, in priority order, the CPU last, and
        as many cards as torch itself sees (none here; all of them on a GPU machine)."""
        manager = DeviceManager()
        labels = [d.label for d in manager.devices]
        cuda = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        mps = ["mps"] if torch.backends.mps.is_available() else []
        assert [label for label in labels if label.startswith(("cuda", "mps"))] == cuda + mps
        assert labels[-1] == "cpu" and labels.count("cpu") == 1
        expected_auto = cuda[0] if cuda else (mps[0] if mps else None)
        if expected_auto is not None and len(cuda) <= 1:
            assert manager.get_optimal_device().label == expected_auto

    def test_order_and_properties(self) -> None:
        manager = two_gpus_and_mps()
        assert [d.label for d in manager.devices] == ["cuda:0", "cuda:1", "mps", "cpu"]
        first = manager.devices[0]
        assert (first.name, first.total_memory, first.compute_capability) == ("A", 24 * GiB, (8, 0))

    def test_broken_backend_does_not_stop_cpu(self) -> None:
        class Broken(FakeBackend):
            def device_count(self) -> int:
                raise RuntimeError("driver exploded")

        manager = DeviceManager([Broken(), fake_cpu()])
        assert [d.label for d in manager.devices] == ["cpu"]

    def test_real_cuda_backend_without_cuda(self) -> None:
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
        backend = CUDABackend()
        assert backend.is_available() is False
        assert backend.device_count() == 0

    def test_nvml_without_its_driver_library_is_not_ready(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """nvidia-ml-py installed but no driver: NVML says not ready (and why,
        in the debug log), and the backend reads through torch instead."""
        import types

        class LibraryNotFound(Exception):
            pass

        module = types.ModuleType("pynvml")

        def init() -> None:
            raise LibraryNotFound("NVML Shared Library Not Found")

        module.nvmlInit = init  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pynvml", module)
        nvml = _NVML()
        assert nvml.ready() is False and nvml.memory("GPU-x") is None and nvml.processes("GPU-x") is None
        monkeypatch.setattr(module, "nvmlInit", lambda: None)
        assert nvml.ready() is False  # decided once: not retried on every reading


class TestSelection:
    def test_auto_prefers_cuda_with_most_free_memory(self) -> None:
        assert two_gpus_and_mps().get_optimal_device().label == "cuda:1"

    def test_auto_respects_min_memory_then_falls_to_next_kind(self) -> None:
        manager = two_gpus_and_mps()
        assert manager.get_optimal_device(min_memory_gb=10).label == "cuda:1"
        assert manager.get_optimal_device(min_memory_gb=20).label == "mps"
        assert manager.get_optimal_device(min_memory_gb=40).label == "cpu"

    @pytest.mark.parametrize(
        ("hint", "label"),
        [
            ("cuda", "cuda:1"),
            ("cuda:0", "cuda:0"),
            ("CUDA:1", "cuda:1"),
            ("mps", "mps"),
            ("cpu", "cpu"),
            ("auto", "cuda:1"),
            (None, "cuda:1"),
            (torch.device("cuda", 0), "cuda:0"),
            (DeviceInfo(device_type=DeviceType.CUDA, device_id=0), "cuda:0"),
        ],
    )
    def test_hints(self, hint: object, label: str) -> None:
        assert two_gpus_and_mps().get_optimal_device(hint).label == label  # type: ignore[arg-type]

    def test_a_missing_card_names_what_is_there(self) -> None:
        with pytest.raises(DeviceUnavailableError, match=r"cuda:7 is not available .*available: cuda:0, cuda:1, "
                                                         r"mps, cpu\)\. Use --device auto"):
            two_gpus_and_mps().get_optimal_device("cuda:7")

    @pytest.mark.parametrize("hint", ["tpu", "", "cuda:x", "cpu:1", "mps:3", "cuda:-1"])
    def test_malformed_hints_say_what_is_accepted(self, hint: str) -> None:
        with pytest.raises(DeviceUnavailableError) as info:
            two_gpus_and_mps().get_optimal_device(hint)
        assert str(info.value) == f"Unknown device {hint!r}: use one of auto, cuda, cuda:N, xpu, xpu:N, mps, cpu."

    def test_cuda_hint_without_cuda_never_falls_back(self) -> None:
        manager = DeviceManager([fake_cpu()])
        with pytest.raises(DeviceUnavailableError, match=r"cuda is not available.*available: cpu"):
            manager.get_optimal_device("cuda")

    def test_explicit_device_with_too_little_memory(self) -> None:
        with pytest.raises(DeviceUnavailableError, match=r"has 4\.0 GiB free memory, less than the 10 GiB required"):
            two_gpus_and_mps().get_optimal_device("cuda:0", min_memory_gb=10)

    def test_parse_hint(self) -> None:
        assert parse_device_hint("auto") is None
        assert parse_device_hint(" cuda:2 ") == (DeviceType.CUDA, 2)
        assert parse_device_hint("mps") == (DeviceType.MPS, None)


    def test_unreadable_cards_sort_last_not_as_full_or_free(self) -> None:
        broken = FakeBackend(cards=[FakeCard(name="A", total=24 * GiB), FakeCard(name="B", total=8 * GiB)])
        manager = DeviceManager([broken, fake_cpu()])
        assert manager.get_optimal_device().label == "cuda:0"
        broken.readable = False
        assert manager.free_bytes(manager.devices[0]) is None
        assert manager.try_memory_info(manager.devices[0]) is None
        with pytest.raises(DeviceUnavailableError, match="an unreadable amount of free memory"):
            manager.get_optimal_device("cuda:1", min_memory_gb=1)
        assert manager.get_optimal_device(min_memory_gb=1).label == "cpu"  # unknown is not "enough"

    def test_compute_dtype_and_processes_come_from_the_backend(self) -> None:
        manager = two_gpus_and_mps()
        assert manager.compute_dtype(manager.get_optimal_device("cuda:0")) == "bfloat16"
        assert manager.compute_dtype(manager.cpu()) == "float32"
        procs = manager.processes(manager.get_optimal_device("cuda:0"))
        assert procs is not None and procs[0].used_bytes == 20 * GiB


class TestMemory:
    def test_memory_info_is_a_record_and_a_mapping(self) -> None:
        manager = two_gpus_and_mps()
        info = manager.get_device_memory_info(manager.get_optimal_device("cuda:0"))
        assert isinstance(info, MemoryInfo)
        assert dict(info) == {"total": 24 * GiB, "free": 4 * GiB, "allocated": 0, "reserved": 0}
        assert info["free"] <= info["total"]
        assert info.utilisation_pct == pytest.approx(100 * 20 / 24)

    def test_memory_of_absent_device_is_an_error(self) -> None:
        with pytest.raises(DeviceUnavailableError):
            DeviceManager([fake_cpu()]).get_device_memory_info(DeviceInfo(device_type=DeviceType.CUDA))

    def test_real_cpu_reading_matches_psutil(self) -> None:
        import psutil

        manager = DeviceManager([CPUBackend()])
        info = manager.get_device_memory_info(manager.cpu())
        assert info.total == psutil.virtual_memory().total
        assert 0 < info.free <= info.total and 0 < info.utilisation_pct < 100
        assert info.allocated > 50 * 1024**2  # this process's RSS: torch alone is more

    def test_real_cpu_peak_window_sees_a_transient_allocation(self) -> None:
        import numpy as np

        backend = CPUBackend()
        backend.reset_peak(0)
        before = backend.counters(0)
        if before.peak_allocated is None:
            pytest.skip("no resettable peak RSS on this OS")
        block = np.ones(200 * 1024**2 // 8)  # 200 MiB, touched
        del block
        after = backend.counters(0)
        assert after.peak_allocated is not None
        assert after.peak_allocated - before.allocated >= 190 * 1024**2
        backend.reset_peak(0)
        assert backend.counters(0).peak_allocated < after.peak_allocated  # type: ignore[operator]


class TestClearCache:
    def test_clear_cache_on_a_missing_device_touches_no_backend(self) -> None:
        cuda = FakeBackend(available=False)
        DeviceManager([cuda, fake_cpu()]).clear_cache(DeviceInfo(device_type=DeviceType.CUDA, device_id=0))
        assert cuda.cards[0].clear_calls == 0

    def test_real_cpu_clear_cache_returns_freed_heap_memory(self) -> None:
        import numpy as np
        import psutil

        from ragged.gpu.backends import host_heap

        if not host_heap.can_trim():
            pytest.skip("no malloc_trim here (not glibc): freed heap stays with the process")
        manager = DeviceManager([CPUBackend()])
        blocks = [np.ones(8 * 1024, dtype=np.float64) for _ in range(3200)]  # 200 MiB in 64 KiB heap blocks
        del blocks[::2]  # holes: glibc keeps the freed pages resident
        before = psutil.Process().memory_info().rss
        manager.clear_cache(manager.cpu())  # gc + malloc_trim
        after = psutil.Process().memory_info().rss
        del blocks
        assert before - after > 50 * 1024**2

    def test_clear_cache_reaches_the_backend(self) -> None:
        cuda = FakeBackend(cards=[FakeCard(allocated=1 * GiB, reserved=3 * GiB)])
        manager = DeviceManager([cuda, fake_cpu()])
        manager.clear_cache(manager.get_optimal_device("cuda:0"))
        assert cuda.cards[0].clear_calls == 1
        assert cuda.cards[0].reserved == 1 * GiB


@pytest.mark.cuda
def test_hidden_devices_are_not_detected() -> None:
    """CUDA_VISIBLE_DEVICES is honoured: an empty list hides every card (a
    GPU machine sees its cards without it)."""
    code = (
        "from ragged.gpu import DeviceManager, DeviceType;"
        "print(sum(d.device_type is DeviceType.CUDA for d in DeviceManager().devices))"
    )

    def cards(env: dict[str, str]) -> int:
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        return int(out.stdout.strip())

    visible = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    assert cards(visible) == torch.cuda.device_count() >= 1
    assert cards({**visible, "CUDA_VISIBLE_DEVICES": ""}) == 0


@pytest.mark.cuda
class TestRealCUDA:
    def test_memory_info_accurate(self) -> None:
        manager = DeviceManager()
        device = manager.get_optimal_device("cuda")
        info = manager.get_device_memory_info(device)
        free, total = torch.cuda.mem_get_info(device.index)
        assert info.total == total == device.total_memory
        assert abs(info.free - free) < 1024**3  # NVML and the CUDA runtime count reserved memory differently
        assert device.compute_capability is not None

    def test_allocation_shows_in_counters_and_clear_cache_returns_it(self) -> None:
        manager = DeviceManager()
        device = manager.get_optimal_device("cuda")
        before = manager.counters(device)
        block = torch.empty(256 * 1024**2, dtype=torch.uint8, device=device.torch_device)
        assert manager.counters(device).allocated - before.allocated >= 256 * 1024**2
        del block
        manager.clear_cache(device)
        assert manager.counters(device).reserved <= before.reserved + 2 * 1024**2

    def test_every_visible_card_selectable(self) -> None:
        manager = DeviceManager()
        for index in range(torch.cuda.device_count()):
            assert manager.get_optimal_device(f"cuda:{index}").index == index
