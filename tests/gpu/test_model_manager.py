"""Model lifecycle over a fake card: admission by the policy, make room,
honoured or refused placements, idle unload."""

from __future__ import annotations

import time

import pytest
import torch

from ragged.errors import ModelDoesNotFitError, ModelError
from ragged.gpu import BatchSizeConfig, DeviceInfo, DeviceManager, DeviceType, MemoryPolicy, ModelManager, Runtime
from ragged.gpu.model_manager import ModelEvent
from tests.fakes import BookedModule, FakeBackend, FakeCard, GiB, MiB, fake_cpu, oom_message


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Loads:
    """A loader that books the model's bytes on the fake card and records where it loaded."""

    def __init__(self, backend: FakeBackend, size: int) -> None:
        self.backend, self.size = backend, size
        self.devices: list[str] = []

    def __call__(self, device: DeviceInfo) -> torch.nn.Module:
        self.devices.append(device.label)
        return BookedModule(self.backend, self.size, on_card=device.is_accelerator)


@pytest.fixture
def rig():  # type: ignore[no-untyped-def]
    backend = FakeBackend(cards=[FakeCard(total=10 * GiB)])
    manager = DeviceManager([backend, fake_cpu()])
    clock = Clock()
    models = ModelManager(manager, idle_timeout_s=60, clock=clock)
    return backend, manager, clock, models


def test_loads_on_device_when_the_policy_admits_it(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    loader = Loads(backend, 4 * GiB)
    held = models.acquire("a", loader, 4 * GiB, gpu, work_bytes=500 * MiB)
    assert models.load("a", loader, 4 * GiB, gpu) is held.model  # held: not loaded twice
    assert loader.devices == ["cuda:0"]
    assert not held.placement.fell_back and held.placement.reason is None
    assert held.placement.batch_room_bytes == int(6.5 * GiB) - 4 * GiB  # the line less the model
    assert backend.cards[0].allocated == 4 * GiB


def test_a_model_that_leaves_no_room_for_its_work_is_not_admitted(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    loader = Loads(backend, 6 * GiB)  # fits in free memory, but 6 GiB is about the whole 6.5 GiB line
    with pytest.raises(ModelDoesNotFitError, match=r"needs 6\.00 GiB plus 0\.98 GiB for one item.*--memory-target"):
        models.load("big", loader, 6 * GiB, gpu, work_bytes=1000 * MiB, allow_fallback=False)
    assert loader.devices == [] and backend.cards[0].allocated == 0


def test_an_automatic_choice_falls_back_and_says_why(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    loader = Loads(backend, 6 * GiB)
    held = models.acquire("big", loader, 6 * GiB, gpu, work_bytes=1000 * MiB, allow_fallback=True)
    assert loader.devices == ["cpu"]
    assert held.placement.fell_back and held.placement.device.label == "cpu"
    assert held.placement.reason is not None and "cuda:0 has 6.50 GiB under its 65% line" in held.placement.reason
    assert models.counts[ModelEvent.FALLBACK] == 1


def test_the_cpu_copy_needs_room_too(rig) -> None:  # type: ignore[no-untyped-def]
    backend, _, _, _ = rig
    small_ram = DeviceManager([backend, fake_cpu(total=8 * GiB, others=4 * GiB)])
    models = ModelManager(small_ram, idle_timeout_s=None)
    with pytest.raises(ModelDoesNotFitError, match="does not fit in RAM either"):
        models.load("big", Loads(backend, 7 * GiB), 7 * GiB, small_ram.get_optimal_device("cuda:0"))


def test_size_may_depend_on_the_device(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    sizes = {"cuda": 7 * GiB, "cpu": 8 * GiB}  # the same weights in two dtypes
    held = models.acquire("m", Loads(backend, 7 * GiB), lambda d: sizes[d.device_type.value],
                          manager.get_optimal_device("cuda:0"))
    assert held.device.label == "cpu" and held.size_bytes == 8 * GiB


def test_makes_room_by_unloading_least_recently_used(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    a = models.load("a", Loads(backend, 3 * GiB), 3 * GiB, gpu)
    clock.now = 1
    models.load("b", Loads(backend, 3 * GiB), 3 * GiB, gpu)
    clock.now = 2
    models.get("a")  # a is now more recent than b
    held = models.acquire("c", Loads(backend, 3 * GiB), 3 * GiB, gpu)
    assert set(models.loaded) == {"a", "c"} and held.placement.evicted == ("b",)
    assert held.device.label == "cuda:0"
    assert next(a.parameters()).device.type == "cpu"  # a untouched (the fake computes on the CPU)
    assert backend.cards[0].allocated == 6 * GiB  # b's bytes really went back
    assert models.counts[ModelEvent.EVICT] == 1


def test_a_small_model_runs_on_the_cpu_rather_than_unload_a_large_one(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("vision", Loads(backend, 6 * GiB), 6 * GiB, gpu)  # idle, but 6 GiB to reload
    loader = Loads(backend, 200 * MiB)
    held = models.acquire("text", loader, 200 * MiB, gpu, work_bytes=400 * MiB)  # auto: the CPU may take it
    assert loader.devices == ["cpu"] and set(models.loaded) == {"vision", "text"}
    assert held.placement.chose_cpu and held.placement.evicted == ()
    assert held.placement.reason is not None and "costs less than unloading vision" in held.placement.reason
    assert models.counts[ModelEvent.EVICT] == 0


def test_an_explicit_device_makes_room_even_for_a_small_model(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("vision", Loads(backend, 6 * GiB), 6 * GiB, gpu)
    held = models.acquire("text", Loads(backend, 200 * MiB), 200 * MiB, gpu, work_bytes=400 * MiB,
                          allow_fallback=False)
    assert held.device.label == "cuda:0" and held.placement.evicted == ("vision",)


def test_a_model_of_similar_size_evicts_rather_than_runs_on_the_cpu(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("a", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    held = models.acquire("b", Loads(backend, 3 * GiB), 3 * GiB, gpu)  # only 4/3 times smaller than a
    assert held.device.label == "cuda:0" and held.placement.evicted == ("a",) and not held.placement.chose_cpu


def test_the_model_cheapest_to_reload_is_unloaded_first(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("slow", Loads(backend, 3 * GiB), 3 * GiB, gpu)
    clock.now = 1
    models.load("quick", Loads(backend, 3 * GiB), 3 * GiB, gpu)  # used more recently...
    models.loaded["slow"].load_seconds, models.loaded["quick"].load_seconds = 40.0, 2.0  # ...but cheap to reload
    held = models.acquire("new", Loads(backend, 3 * GiB), 3 * GiB, gpu, allow_fallback=False)
    assert held.placement.evicted == ("quick",) and set(models.loaded) == {"slow", "new"}


def test_reading_what_is_loaded_never_waits_for_a_load(rig) -> None:  # type: ignore[no-untyped-def]
    import threading

    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("a", Loads(backend, 1 * GiB), 1 * GiB, gpu)
    started, release = threading.Event(), threading.Event()

    def slow_loader(device: DeviceInfo) -> torch.nn.Module:
        started.set()
        assert release.wait(10)
        return BookedModule(backend, 1 * GiB, on_card=True)

    loading = threading.Thread(target=models.load, args=("b", slow_loader, 1 * GiB, gpu))
    loading.start()
    try:
        assert started.wait(10)  # the loading thread holds the manager's lock now
        seen: list[set[str]] = []
        reader = threading.Thread(target=lambda: seen.append(set(models.loaded)))
        reader.start()
        reader.join(timeout=2)
        assert not reader.is_alive() and seen == [{"a"}]  # answered at once, without the model in flight
    finally:
        release.set()
        loading.join(timeout=10)
    assert set(models.loaded) == {"a", "b"}


def test_pinned_models_are_never_evicted(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    models.load("a", Loads(backend, 4 * GiB), 4 * GiB, gpu)
    with models.using("a"):
        loader = Loads(backend, 4 * GiB)
        held = models.acquire("b", loader, 4 * GiB, gpu)
    assert loader.devices == ["cpu"] and held.placement.fell_back
    assert "a" in models.loaded


def test_a_load_that_runs_out_of_memory_is_reported_as_one(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")

    def fails_on_card(device: DeviceInfo) -> torch.nn.Module:
        if device.is_accelerator:
            raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, GiB))
        return torch.nn.Linear(2, 2)

    with pytest.raises(ModelError, match="Loading x on cuda:0 ran out of memory"):
        models.load("x", fails_on_card, GiB, gpu, allow_fallback=False)
    held = models.acquire("x", fails_on_card, GiB, gpu, allow_fallback=True)
    assert held.device.label == "cpu" and held.placement.reason == "loading on cuda:0 ran out of memory"


def test_an_unreadable_device_admits_nothing(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, _, models = rig
    gpu = manager.get_optimal_device("cuda:0")
    backend.readable = False
    with pytest.raises(ModelDoesNotFitError, match="has unknown under"):
        models.load("a", Loads(backend, GiB), GiB, gpu, allow_fallback=False)


def test_idle_models_are_unloaded_and_their_memory_returned(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    model = models.load("a", Loads(backend, 4 * GiB), 4 * GiB, manager.get_optimal_device("cuda:0"))
    clock.now = 59
    assert models.unload_idle() == []
    clock.now = 61
    assert models.unload_idle() == ["a"]
    assert models.loaded == {}
    assert all(p.device.type == "meta" for p in model.parameters())  # storage released
    assert (backend.cards[0].allocated, backend.cards[0].reserved) == (0, 0)  # and the cache cleared
    assert models.counts[ModelEvent.IDLE_UNLOAD] == 1


def test_a_model_used_again_while_the_reaper_runs_is_kept(rig) -> None:  # type: ignore[no-untyped-def]
    """The reaper picks idle models, then unloads them one by one; a request
    that uses (and pins) one of them meanwhile must keep it."""
    backend, manager, clock, models = rig
    card = manager.get_optimal_device("cuda:0")
    models.load("a", Loads(backend, GiB), GiB, card)
    b = models.load("b", Loads(backend, GiB), GiB, card)
    pinned = models.using("b")

    def request_arrives(_index: int) -> None:  # while "a" is being unloaded
        if not backend.on_clear_fired:
            backend.on_clear_fired = True
            assert models.get("b") is b
            pinned.__enter__()

    backend.on_clear_fired = False  # type: ignore[attr-defined]
    backend.on_clear = request_arrives
    clock.now = 61
    assert models.unload_idle() == ["a"]
    assert "b" in models.loaded and all(p.device.type != "meta" for p in b.parameters())
    pinned.__exit__(None, None, None)


def test_pinned_models_are_never_idle(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    models.load("a", Loads(backend, GiB), GiB, manager.get_optimal_device("cuda:0"))
    with models.using("a"):
        clock.now = 1000
        assert models.unload_idle() == []
    with pytest.raises(KeyError), models.using("missing"):
        pass


def test_holding_loads_and_pins_in_one_step(rig) -> None:  # type: ignore[no-untyped-def]
    """What a batch job holds cannot be unloaded before its work starts: the
    load and the pin happen under one lock, and the pin ends with the block."""
    backend, manager, clock, models = rig
    card = manager.get_optimal_device("cuda:0")
    with models.holding("a", Loads(backend, GiB), GiB, card) as held:
        assert held.pins == 1 and held.device.same_device(card)
        clock.now = 1000
        assert models.unload_idle() == [] and not models.unload("missing")
        assert "a" in models.loaded
    assert held.pins == 0 and held.last_used == 1000  # used until the block ended
    clock.now = 1061
    assert models.unload_idle() == ["a"]


def test_close_and_context_manager_release_everything(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, _ = rig
    with ModelManager(manager, clock=clock) as models:
        models.load("a", Loads(backend, GiB), GiB, manager.get_optimal_device("cuda:0"))
        models.load("b", Loads(backend, GiB), GiB, manager.cpu())
        models.start_reaper(interval_s=0.01)
    assert models.loaded == {} and backend.cards[0].allocated == 0
    assert models.unload("a") is False


def test_reaper_thread_unloads_idle_models(rig) -> None:  # type: ignore[no-untyped-def]
    backend, manager, clock, models = rig
    models.load("a", Loads(backend, GiB), GiB, manager.get_optimal_device("cuda:0"))
    clock.now = 1000
    models.start_reaper(interval_s=0.01)
    deadline = time.monotonic() + 5
    while models.loaded and time.monotonic() < deadline:
        time.sleep(0.01)
    models.close()
    assert models.loaded == {} and backend.cards[0].allocated == 0


def test_policy_is_shared(rig) -> None:  # type: ignore[no-untyped-def]
    """A runtime's one policy is the one its model manager admits by and the
    one its batch sizers budget by, whatever policy a batch configuration carried."""
    backend, manager, _, _ = rig
    gpu = manager.get_optimal_device("cuda:0")
    strict = BatchSizeConfig(max_batch_size=64, policy=MemoryPolicy(target_utilisation=0.5))  # a 40% line
    runtime = Runtime(manager, policy=MemoryPolicy(target_utilisation=0.95), batch_config=strict)  # an 85% line
    held = runtime.model_manager.acquire("big", Loads(backend, 6 * GiB), 6 * GiB, gpu, work_bytes=1000 * MiB,
                                         allow_fallback=False)  # the default 65% line refuses it (see above)
    assert held.device.label == "cuda:0"
    for work, config in (("big/pages", None), ("big/queries", strict)):
        sizer = runtime.sizer_for(gpu, work, config=config, prior_bytes_per_load=100 * MiB)
        assert sizer.memory_limit() == 25  # (8.5 GiB line - 6 GiB held) / 100 MiB; at a 40% line: 1


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
    assert torch.cuda.memory_reserved(gpu.index) < 8192 * 8192 * 4  # returned to the driver, not just cached
