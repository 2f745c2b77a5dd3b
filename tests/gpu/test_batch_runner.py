"""Adaptive batches over a fake card that runs out of memory for real."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import torch

from ragged.errors import ModelDoesNotFitError, OutOfMemoryRecoveryError
from ragged.gpu import (
    AdaptiveBatchSizer,
    BatchRunner,
    BatchSizeConfig,
    DeviceInfo,
    DeviceManager,
    DeviceType,
    ItemFailure,
    MemoryMonitor,
    OOMHandler,
    Stages,
)
from tests.fakes import FakeBackend, FakeCard, FakeClock, GiB, MiB, Workload, fake_cpu, oom_message


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClock]:
    """The runner's timer, moved only by the workloads: throughput is deterministic."""
    fake = FakeClock()
    monkeypatch.setattr("ragged.gpu.batch_runner.time.perf_counter", fake)
    yield fake


def setup(card: FakeCard, config: BatchSizeConfig | None = None):  # type: ignore[no-untyped-def]
    backend = FakeBackend(cards=[card])
    manager = DeviceManager([backend, fake_cpu()])
    device = manager.get_optimal_device("cuda:0")
    monitor = MemoryMonitor(device, manager)
    handler = OOMHandler(manager)
    sizer = AdaptiveBatchSizer(device, monitor, config or BatchSizeConfig(max_batch_size=64), manager,
                               oom_handler=handler)
    return backend, manager, device, sizer, monitor, handler


def test_every_item_once_in_caller_order_largest_first() -> None:
    _, manager, device, _, _, handler = setup(FakeCard(total=10 * GiB))
    seen: list[list[int]] = []

    def process(indices: list[int], dev: DeviceInfo) -> list[str]:
        seen.append(indices)
        return [f"item{i}" for i in indices]

    costs = [5, 50, 10, 40, 20, 30, 1]
    results, stats = BatchRunner(device, None, handler, fixed_batch_size=3).run(costs, process)
    assert results == [f"item{i}" for i in range(7)]
    assert seen == [[1, 3, 5], [4, 2, 0], [6]]  # sorted by cost, descending
    assert stats.batch_sizes == [3, 3, 1]


def test_first_batch_is_the_memory_plan_and_fits(clock: FakeClock) -> None:
    # 10 GiB card with a 4 GiB model held; each item needs 200 MiB, plus 100 MiB.
    card = FakeCard(total=10 * GiB, allocated=4 * GiB, reserved=4 * GiB)
    backend, _, device, sizer, monitor, handler = setup(card)
    work = Workload(backend, base=100 * MiB, per_item=200 * MiB, seconds_per_batch=0.1, seconds_per_item=0.01,
                    clock=clock)
    sizer.prior_bytes_per_load = float(200 * MiB)  # a prior close to the truth
    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, monitor=monitor)
    results, stats = runner.run([1] * 60, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(60)]
    budget = int(10 * GiB * 0.65) - 4 * GiB
    best = (budget - 100 * MiB) // (200 * MiB)
    assert stats.oom.ooms == 0
    assert stats.batch_sizes[0] == budget // (200 * MiB)  # from memory, not 1 or 2
    assert stats.sizing is not None and stats.sizing.chosen[0].size == stats.batch_sizes[0]  # the run says so
    assert stats.sizing.batches == len(stats.batch_sizes) and {r.size for r in stats.sizing.rates} <= set(
        stats.batch_sizes)
    assert max(stats.batch_sizes) <= best + 1 and stats.batch_sizes[-2] <= best
    assert stats.peak_bytes is not None and stats.peak_bytes <= budget


def test_an_optimistic_prior_fails_only_the_first_batch_then_measurements_take_over(clock: FakeClock) -> None:
    card = FakeCard(total=10 * GiB, allocated=4 * GiB, reserved=4 * GiB)
    backend, _, device, sizer, monitor, handler = setup(card)
    work = Workload(backend, base=100 * MiB, per_item=200 * MiB, seconds_per_batch=0.1, seconds_per_item=0.01,
                    clock=clock)
    sizer.prior_bytes_per_load = 1.0  # a wildly optimistic prior: the first batch (64) cannot fit
    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, monitor=monitor)
    results, stats = runner.run([1] * 120, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(120)]
    budget = int(10 * GiB * 0.65) - 4 * GiB
    best = (budget - 100 * MiB) // (200 * MiB)
    # The first batch (64) failed and was halved until it fitted (64, 32, then 16 fits the card).
    assert [size for _, size in work.calls[:3]] == [64, 32, 16] and stats.oom.ooms == 2
    assert stats.batch_sizes[:4] == [16] * 4  # the failed batch's items, in the halves that fitted the card
    assert max(stats.batch_sizes[4:]) <= best  # then nothing above what the budget holds, as measured
    _, again = runner.run([1] * 60, lambda idx, dev: work(idx, dev.label))
    assert again.oom.ooms == 0 and again.peak_bytes is not None and again.peak_bytes <= budget


def test_oom_splits_the_batch_keeps_finished_items_and_counts_once() -> None:
    card = FakeCard(total=4 * GiB)
    backend, _, device, sizer, monitor, handler = setup(card, BatchSizeConfig(max_batch_size=64,
                                                                               initial_batch_size=16))
    work = Workload(backend, base=0, per_item=1 * GiB)  # at most 3 items fit in 4 GiB
    sizer.prior_bytes_per_load = 1.0
    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, monitor=monitor)
    results, stats = runner.run([1] * 10, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(10)]
    tried = [size for _, size in work.calls]
    assert tried[:4] == [10, 5, 2, 2]  # 10 fails, 5 fails, then halves of 2
    assert all(size <= 4 for size in tried[2:])  # never back to a size that failed
    assert stats.oom.ooms == 2 and stats.oom.recoveries["reduce_batch"] == 2
    assert handler.stats.ooms == 2  # the engine's own record, not a second one
    assert sizer.ceiling is not None and sizer.ceiling <= 4
    assert sum(stats.batch_sizes) == 10


def test_the_next_run_starts_below_the_size_that_failed() -> None:
    card = FakeCard(total=int(3.5 * GiB))
    backend, _, device, _, _, handler = setup(card)
    work = Workload(backend, base=0, per_item=1 * GiB)
    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=8, work="pages")
    runner.run([1] * 8, lambda idx, dev: work(idx, dev.label))
    work.calls.clear()
    _, stats = runner.run([1] * 8, lambda idx, dev: work(idx, dev.label))
    assert stats.oom.ooms == 0 and max(size for _, size in work.calls) <= 3


def test_single_item_is_split_then_retried_after_clearing_then_runs_on_cpu() -> None:
    backend, _, device, _, _, handler = setup(FakeCard(total=4 * GiB))
    calls: list[tuple[str, int]] = []

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        calls.append((dev.label, len(indices)))
        if dev.is_accelerator and 2 in indices:
            backend.allocate(0, 5 * GiB)  # page 2 alone is too big for this card
        return [i + 100 for i in indices]

    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=2)
    results, stats = runner.run([3, 2, 1, 0], process)
    assert results == [100, 101, 102, 103]
    # [0, 1] fits; [2, 3] fails and is split; [2] fails, again after clearing, then runs on the CPU.
    assert calls == [("cuda:0", 2), ("cuda:0", 2), ("cuda:0", 1), ("cuda:0", 1), ("cpu", 1), ("cuda:0", 1)]
    assert stats.cpu_fallback_items == 1
    assert stats.oom.as_dict() == {"ooms": 3, "failures": 0, "clear_cache": 1, "reduce_batch": 1,
                                   "cpu_fallback": 1}
    assert backend.cards[0].clear_calls == 3  # released after each OOM


def test_cpu_fallback_disabled_gives_a_clear_error() -> None:
    _, manager, device, _, _, _ = setup(FakeCard(total=1 * GiB))

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, GiB))

    runner: BatchRunner[int] = BatchRunner(device, None, OOMHandler(manager, enable_cpu_fallback=False),
                                           fixed_batch_size=1)
    with pytest.raises(OutOfMemoryRecoveryError, match=r"Out of memory on cuda:0 at batch 1 .*Tried: clear cache"):
        runner.run([1], process)


def test_keep_going_fails_only_the_item_that_fits_nowhere() -> None:
    backend, _, device, _, _, handler = setup(FakeCard(total=4 * GiB))
    done: list[int] = []

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        if 3 in indices:  # too large on the card and on the CPU
            raise (torch.OutOfMemoryError(oom_message(DeviceType.CUDA, GiB)) if dev.is_accelerator
                   else RuntimeError(oom_message(DeviceType.CPU, 10**12)))
        return [i * 2 for i in indices]

    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=4)
    results, stats = runner.run([1] * 6, process, on_batch=done.append, keep_going=True)
    assert [r for i, r in enumerate(results) if i != 3] == [0, 2, 4, 8, 10]
    failure = results[3]
    assert isinstance(failure, ItemFailure) and "Out of memory on cuda:0" in failure.reason
    assert sum(done) == 6  # every item counted once, the failed one too
    assert stats.failed_items == 1 and handler.stats.failures == 1


def test_no_room_for_a_cpu_copy_is_a_clear_failure() -> None:
    _, _, device, _, _, handler = setup(FakeCard(total=4 * GiB))

    def no_room(cpu: DeviceInfo) -> None:
        raise ModelDoesNotFitError("its CPU copy (9 GiB) does not fit in RAM either")

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, GiB))

    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=1, prepare_fallback=no_room)
    with pytest.raises(OutOfMemoryRecoveryError, match="no CPU fallback: its CPU copy"):
        runner.run([1], process)


def test_oom_on_cpu_at_one_item_is_reported() -> None:
    manager = DeviceManager([fake_cpu()])

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        raise RuntimeError(oom_message(DeviceType.CPU, 10**12))

    runner: BatchRunner[int] = BatchRunner(manager.cpu(), None, OOMHandler(manager), fixed_batch_size=2)
    with pytest.raises(OutOfMemoryRecoveryError, match=r"Out of memory on cpu at batch 2 .*split -> batch 1 on cpu"):
        runner.run([1, 1], process)


def test_other_errors_propagate_untouched() -> None:
    _, _, device, sizer, _, handler = setup(FakeCard())

    def process(indices: list[int], dev: DeviceInfo) -> list[int]:
        raise ValueError("bad page")

    with pytest.raises(ValueError, match="bad page"):
        BatchRunner(device, sizer, handler).run([1, 2], process)


def test_needs_a_sizer_or_a_size(gpu_manager: DeviceManager) -> None:
    with pytest.raises(ValueError):
        BatchRunner(gpu_manager.cpu(), None, OOMHandler(gpu_manager))


def test_fixed_batches_never_return_to_a_size_that_failed() -> None:
    backend, _, device, _, _, handler = setup(FakeCard(total=int(3.5 * GiB)))
    work = Workload(backend, base=0, per_item=1 * GiB)  # 3 items fit, 4 do not
    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=4)
    results, stats = runner.run([1] * 12, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(12)]
    assert [size for _, size in work.calls] == [4, 2, 2, 3, 3, 2]  # one OOM, then at most 3
    assert stats.oom.ooms == 1


class PrepareLog:
    """Stages that record which thread prepared which batch."""

    def __init__(self, fail_compute_at: int | None = None, clock: FakeClock | None = None) -> None:
        self.prepared: list[tuple[list[int], str]] = []
        self.computed: list[list[int]] = []
        self.active = 0
        self.overlap = False
        self.lock = threading.Lock()
        self.fail_at = fail_compute_at
        self.clock = clock

    def prepare(self, indices: list[int]) -> list[int]:
        with self.lock:
            self.active += 1
            self.overlap |= self.active > 1
        self.prepared.append((list(indices), threading.current_thread().name))
        with self.lock:
            self.active -= 1
        return [i * 10 for i in indices]

    def compute(self, prepared: list[int], device: DeviceInfo) -> list[int]:
        self.computed.append(prepared)
        if self.fail_at is not None and device.is_accelerator and len(prepared) >= self.fail_at:
            raise torch.OutOfMemoryError(oom_message(DeviceType.CUDA, GiB))
        if self.clock is not None:
            self.clock.advance(0.1 + 0.001 * len(prepared))  # larger batches are faster per item
        return [p + 1 for p in prepared]


def test_prefetch_prepares_the_next_batch_in_a_worker() -> None:
    _, _, device, _, _, handler = setup(FakeCard())
    log = PrepareLog()
    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=3)
    assert runner.prefetch  # on by default on accelerators
    results, stats = runner.run([1] * 10, Stages(log.prepare, log.compute))
    assert results == [i * 10 + 1 for i in range(10)]
    assert [b for b, _ in log.prepared] == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]  # each once
    assert all(t.startswith("ragged-prepare") for _, t in log.prepared)  # always through the one worker
    assert not log.overlap and stats.prepared_items == 10


def test_prefetch_wastes_nothing_while_batches_grow(clock: FakeClock) -> None:
    _, _, device, sizer, monitor, handler = setup(FakeCard(total=80 * GiB))
    sizer.prior_bytes_per_load = 1.0
    log = PrepareLog(clock=clock)
    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, monitor=monitor)
    results, stats = runner.run([1] * 600, Stages(log.prepare, log.compute))
    assert results == [i * 10 + 1 for i in range(600)]
    changes = sum(a != b for a, b in zip(stats.batch_sizes, stats.batch_sizes[1:], strict=False))
    assert changes >= 4  # the sizes did change (probes alternate sizes)
    assert stats.prepared_items <= 1.05 * 600  # the guesses were used: almost nothing prepared twice


def test_prefetch_survives_oom_and_wrong_guesses() -> None:
    _, _, device, _, _, handler = setup(FakeCard())
    log = PrepareLog(fail_compute_at=4)
    runner: BatchRunner[int] = BatchRunner(device, None, handler, fixed_batch_size=4)
    results, stats = runner.run([1] * 9, Stages(log.prepare, log.compute))
    assert results == [i * 10 + 1 for i in range(9)]
    assert stats.oom.ooms == 1 and not log.overlap
    assert sorted(i for batch in log.computed[1:] for i in batch) == [i * 10 for i in range(9)]


def test_no_prefetch_on_the_cpu(gpu_manager: DeviceManager) -> None:
    log = PrepareLog()
    runner: BatchRunner[int] = BatchRunner(gpu_manager.cpu(), None, OOMHandler(gpu_manager), fixed_batch_size=2)
    assert runner.run([1] * 4, Stages(log.prepare, log.compute))[0] == [1, 11, 21, 31]
    assert all(t == "MainThread" for _, t in log.prepared)


def test_where_peaks_cost_time_only_a_sample_of_batches_is_measured(clock: FakeClock) -> None:
    """On the CPU a peak window hands freed heap back and the next batch faults
    it in again (about a fifth of a tiny model's speed): the runner measures
    while the fit calibrates and at new sizes, then one batch in 16."""
    card = FakeCard(total=10 * GiB, allocated=1 * GiB, reserved=1 * GiB)
    backend, _, device, sizer, monitor, handler = setup(card, BatchSizeConfig(max_batch_size=4))
    backend.costly_peak = True
    resets = 0
    real_reset = backend.reset_peak

    def counting_reset(index: int) -> None:
        nonlocal resets
        resets += 1
        real_reset(index)

    backend.reset_peak = counting_reset  # type: ignore[method-assign]
    work = Workload(backend, base=10 * MiB, per_item=50 * MiB, seconds_per_batch=0.1, seconds_per_item=0.01,
                    clock=clock)
    runner: BatchRunner[int] = BatchRunner(device, sizer, handler, monitor=monitor)
    results, stats = runner.run([1] * 200, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(200)]
    measured = [p for p in stats.batch_peaks if p is not None]
    assert resets == len(measured) and 4 <= len(measured) < len(stats.batch_sizes) // 4
    first = stats.batch_peaks[:4]
    assert all(p is not None for p in first)  # calibration: every early batch
    assert sizer.fit() is not None and stats.peak_bytes == 10 * MiB + 4 * 50 * MiB

    backend.costly_peak = False  # a cheap reading (a GPU): every batch is measured
    resets = 0
    _, again = runner.run([1] * 40, lambda idx, dev: work(idx, dev.label))
    assert resets == len(again.batch_sizes) and None not in again.batch_peaks


class HeapKeepingCPU(FakeBackend):
    """Counters as the real CPU's: resident memory, where what a batch frees
    stays with the process (the heap keeps it for the next batch) until a
    peak window hands it back (``malloc_trim``)."""

    kept = 0

    def allocate(self, index: int, nbytes: int) -> None:
        card = self.cards[index]
        reused = min(self.kept, nbytes)
        self.kept -= reused
        card.allocated += nbytes - reused
        card.reserved = card.allocated
        card.peak = max(card.peak, card.allocated)

    def release(self, index: int, nbytes: int) -> None:
        self.kept += nbytes  # still resident

    def reset_peak(self, index: int) -> None:
        card = self.cards[index]
        card.allocated -= self.kept
        card.reserved = card.peak = card.allocated
        self.kept = 0


def test_a_peak_is_measured_above_what_is_held_once_the_window_opens(clock: FakeClock) -> None:
    """The CPU keeps freed heap resident between batches; a peak measured
    from the reading taken before the window handed it back would miss what
    the batch reused (here, all of it): every measured peak is the batch's need."""
    backend = HeapKeepingCPU(kind=DeviceType.CPU, cards=[FakeCard(total=16 * GiB, allocated=1 * GiB,
                                                                  reserved=1 * GiB)], costly_peak=True)
    manager = DeviceManager([backend])
    device = manager.cpu()
    monitor = MemoryMonitor(device, manager)
    handler = OOMHandler(manager)
    sizer = AdaptiveBatchSizer(device, monitor, BatchSizeConfig(max_batch_size=4), manager, oom_handler=handler)
    work = Workload(backend, base=10 * MiB, per_item=50 * MiB, seconds_per_batch=0.1, seconds_per_item=0.01,
                    clock=clock)
    results, stats = BatchRunner(device, sizer, handler, monitor=monitor).run(
        [1] * 60, lambda idx, dev: work(idx, dev.label))
    assert results == [i * 10 for i in range(60)]
    measured = [(n, p) for n, p in zip(stats.batch_sizes, stats.batch_peaks, strict=True) if p is not None]
    assert len(measured) >= 4 and backend.kept > 0
    assert all(p == 10 * MiB + n * 50 * MiB for n, p in measured)


def test_fixed_batches_are_measured_on_one_cadence_across_calls() -> None:
    """A fixed-batch caller (``--batch-size``, the server's request batches)
    calls the runner once a document or request: on the CPU, where a
    measured batch runs slower, the first batch of every call must not be
    the measured one; one batch in 16 over the calls is."""
    from ragged.gpu import Runtime
    from ragged.gpu.managed import ManagedBatchJob

    backend = fake_cpu()
    backend.costly_peak = True
    events: list[str] = []  # "m": a peak window opened (the next batch is measured), "b": a batch ran
    real_reset = backend.reset_peak
    backend.reset_peak = lambda index: (events.append("m"), real_reset(index))[1]  # type: ignore[method-assign]
    runtime = Runtime(DeviceManager([backend]))
    job = ManagedBatchJob("fake", lambda device, dtype: object(), lambda device, dtype: MiB, runtime=runtime,
                          device="cpu")

    def batch(indices: list[int], _device: DeviceInfo) -> list[int]:
        events.append("b")
        return [i * 2 for i in indices]

    for _ in range(20):  # 20 calls of 2 batches each: 40 batches
        results, _, _ = job.run([1, 1, 1, 1], batch, work="pages", fixed_batch_size=2)
        assert results == [0, 2, 4, 6]
    batches = "".join(events).replace("mb", "M")  # M: a measured batch
    assert len(batches) == 40 and [n for n, e in enumerate(batches) if e == "M"] == [0, 16, 32]
    # Another kind of work keeps a cadence of its own: its first batch is measured.
    events.clear()
    job.run([1, 1, 1, 1], batch, work="queries", fixed_batch_size=2)
    assert "".join(events) == "mbb"
