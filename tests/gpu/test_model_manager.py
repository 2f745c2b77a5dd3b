"""Model lifecycle over a fake card: memory check, make room, idle unload."""

from __future__ import annotations

import pytest
import torch

from ragged.gpu import DeviceInfo, DeviceManager
from ragged.gpu.model_manager import ModelManager
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader that books the model's size on the fake card and records calls."""

    def __init__(self, backend: FakeBackend, size: int) -> None:
        self.backend, self.size, self.devices = backend, size, []  # type: ignore[var-annotated]

    def __call__(self, device: DeviceInfo) -> torch.nn.Module:
        self.devices.append(device.label)
        if device.is_accelerator:
            self.backend.allocate(0, self.size)
        return torch.nn.Linear(4, 4)


@pytest.fixture
def rig():  # type: ignore[no-untyped-def]
    backend = FakeBackend(cards=[FakeCard(total=10 * GiB)])
    manager = DeviceManager([backend, fake_cpu()])
    clock = Clock()
    models = ModelManager(manager, idle_timeout_s=60, clock=clock)

    def on_clear(index: int) -> None:  # unloading a model gives its bytes back
        card = backend.cards[index]
        card.allocated = sum(m.size_bytes for m in models.loaded.values() if m.device.is_accelerator)
        card.reserved = card.allocated

    backend.on_clear = on_clear
    return backend, manager, clock, models


def test_loads_on_device_when_it_fits(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    loader = Loads(backend, 4 * GiB)
    model = models.load("a", loader, 4 * GiB, gpu)
    assert models.load("a", loader, 4 * GiB, gpu) is model  # held: not loaded twice
    assert loader.devices == ["cuda:0"]
    assert models.loaded["a"].device.label == "cuda:0"


def test_makes_room_by_unloading_least_recently_used(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    a = models.load("a", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    clock.now = 1
    models.load("b", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    clock.now = 2
    models.get("a")  # a is now more recent than b
    models.load("c", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    assert set(models.loaded) == {"a", "c"}
    assert models.loaded["c"].device.label == "cuda:0"
    assert next(a.parameters()).device.type == "cpu"  # a untouched


def test_falls_back_to_cpu_when_nothing_can_be_freed(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("a", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    with models.using("a"):  # pinned: may not be unloaded
        loader = Loads(backend, 7 * GiB)
        models.load("big", loader, 7 * GiB, gpu)
    assert loader.devices == ["cpu"]
    assert models.loaded["big"].on_fallback is True
    assert "a" in models.loaded


def test_idle_models_are_unloaded_and_memory_freed(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    model = models.load("a", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    clock.now = 59
    assert models.unload_idle() == []
    clock.now = 61
    assert models.unload_idle() == ["a"]
    assert models.loaded == {}
    assert all(p.device.type == "meta" for p in model.parameters())  # storage released
    assert backend.cards[0].allocated == 0


def test_pinned_models_are_never_idle(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    models.load("a", Loads(backend, GiB), GiB, manager.get_optimal_device("cuda:0"))
    with models.using("a"):
        clock.now = 1000
        assert models.unload_idle() == []
    with pytest.raises(KeyError), models.using("missing"):
        pass


def test_close_and_context_manager_release_everything(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, _ = rig
    with ModelManager(manager, clock=clock) as models:
        models.load("a", Loads(backend, GiB), GiB, manager.get_optimal_device("cuda:0"))
        models.load("b", Loads(backend, GiB), GiB, manager.cpu())
        models.start_reaper(interval_s=0.01)
    assert models.loaded == {}
    assert models.unload("a") is False


def test_reaper_thread_unloads_idle_models(rig) -> None:  # type: ignore[no-untyped-def]
    import time

    backend, manager, clock, models = rig
    models.load("a", Loads(backend, GiB), GiB, manager.cpu())
    clock.now = 1000
    models.start_reaper(interval_s=0.01)
    deadline = time.monotonic() + 5
    while models.loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    models.close()
    assert models.loaded == {}


@pytest.mark.cuda
def test_unload_really_frees_cuda_memory() -> None:
    manager = DeviceManager()
    gpu = manager.get_optimal_device("cuda")
    models = ModelManager(manager)
    before = torch.cuda.memory_allocated(gpu.index)
    models.load("big", lambda d: torch.nn.Linear(8192, 8192).to(d.torch_device), 8192 * 8192 * 4, gpu)
    assert torch.cuda.memory_allocated(gpu.index) - before >= 8192 * 8192 * 4
    models.unload("big")
    assert torch.cuda.memory_allocated(gpu.index) - before < 1024**2
