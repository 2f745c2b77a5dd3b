"""The pure sizing arithmetic and the stateful sizer."""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from itertools import pairwise

import pytest
from loguru import logger

from ragged.errors import ConfigurationError
from ragged.gpu import (
    AdaptiveBatchSizer,
    BatchSizeConfig,
    DeviceManager,
    MemoryFit,
    MemoryInfo,
    MemoryMonitor,
    MemoryPolicy,
    OOMHandler,
    memory_budget,
    plan_batch_size,
)
from ragged.gpu.batch_sizer import CPU_START, CPU_START_IDLE, UNREADABLE_START, measured_peak
from ragged.gpu.throughput import Why
from ragged.gpu.types import AllocatorCounters
from tests.fakes import FakeBackend, FakeCard, GiB, MiB, fake_cpu


def sizer_on(card: FakeCard, config: BatchSizeConfig | None = None, **kwargs: object) -> AdaptiveBatchSizer:
    manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
    return AdaptiveBatchSizer(manager.get_optimal_device("cuda:0"), None, config, manager,  # type: ignore[arg-type]
                              oom_handler=OOMHandler(manager), **kwargs)


def test_memory_budget_reads_the_policy_from_config_or_policy() -> None:
    info = MemoryInfo(total=10 * GiB, free=10 * GiB, allocated=0, reserved=0)
    assert memory_budget(info, BatchSizeConfig()) == int(6.5 * GiB)
    assert memory_budget(info, BatchSizeConfig(policy=MemoryPolicy(target_utilisation=0.5))) == 4 * GiB
    assert memory_budget(None, MemoryPolicy()) is None


def test_measured_peak_unknown_is_none() -> None:
    before = AllocatorCounters(allocated=100, reserved=100, peak_allocated=None)
    assert measured_peak(before, AllocatorCounters(100, 300, None)) == 200  # MPS: what the cache holds after
    assert measured_peak(before, AllocatorCounters(100, 100, 100)) is None  # did not rise: below resolution
    assert measured_peak(before, AllocatorCounters(100, 100, 450)) == 350


class TestFitAndPlan:
    def test_two_loads_fit_line(self) -> None:
        fit = MemoryFit.fit([(2, 300), (4, 500), (8, 900)])
        assert fit is not None
        assert fit.base_bytes == pytest.approx(100)
        assert fit.bytes_per_load == pytest.approx(100)

    def test_unknown_peaks_are_left_out(self) -> None:
        assert MemoryFit.fit([(2, None), (4, None)]) is None
        assert MemoryFit.fit([(2, None), (4, 400), (8, None)]) == MemoryFit(0.0, 100.0)

    def test_one_load_goes_through_origin(self) -> None:
        assert MemoryFit.fit([(4, 400), (4, 480)]) == MemoryFit(0.0, 120.0)

    def test_negative_intercept_falls_back_conservatively(self) -> None:
        assert MemoryFit.fit([(2, 100), (4, 400)]) == MemoryFit(0.0, 100.0)

    def test_plan_clamps(self) -> None:
        config = BatchSizeConfig(min_batch_size=2, max_batch_size=16)
        kw = {"base_bytes": 0.0, "bytes_per_load": 100.0, "load_per_item": 1.0, "config": config}
        assert plan_batch_size(budget_bytes=1000, **kw) == 10  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=10**6, **kw) == 16  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=50, **kw) == 2  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=10**6, ceiling=5, **kw) == 5  # type: ignore[arg-type]

    def test_a_free_cost_is_refused_not_unlimited(self) -> None:
        with pytest.raises(ConfigurationError):
            plan_batch_size(budget_bytes=10**9, base_bytes=0, bytes_per_load=0, load_per_item=1,
                            config=BatchSizeConfig())

    def test_longer_items_get_smaller_batches(self) -> None:
        config = BatchSizeConfig(max_batch_size=64)
        one = plan_batch_size(budget_bytes=10**6, base_bytes=0, bytes_per_load=100, load_per_item=100, config=config)
        two = plan_batch_size(budget_bytes=10**6, base_bytes=0, bytes_per_load=100, load_per_item=200, config=config)
        assert (one, two) == (64, 50)

    @pytest.mark.parametrize("kwargs", [{"min_batch_size": 0}, {"min_batch_size": 8, "max_batch_size": 4},
                                        {"growth_factor": 1.0}, {"initial_batch_size": 0},
                                        {"min_throughput_gain": -0.5}])
    def test_bad_config(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ConfigurationError):
            BatchSizeConfig(**kwargs)  # type: ignore[arg-type]


class TestSizer:
    def test_calculate_from_prior_and_real_free_memory(self) -> None:
        # 8 GiB card, 6 GiB used by others: above the 65% line -> the smallest batch.
        assert sizer_on(FakeCard(total=8 * GiB, others=6 * GiB)).calculate_batch_size(bytes_per_item=100 * MiB) == 1
        # Empty 8 GiB card: 5.2 GiB / 200 MiB = 26 items.
        assert sizer_on(FakeCard(total=8 * GiB)).calculate_batch_size(bytes_per_item=200 * MiB) == 26
        # The spec's default prior is tiny, so the cap of 32 applies.
        assert sizer_on(FakeCard(total=8 * GiB)).calculate_batch_size() == 32

    def test_cpu_is_bounded_by_available_ram(self) -> None:
        manager = DeviceManager([fake_cpu(total=16 * GiB, others=int(9.5 * GiB))])
        sizer = AdaptiveBatchSizer(manager.cpu(), None, None, manager, oom_handler=OOMHandler(manager))
        # 16 x 0.65 - 9.5 = 0.9 GiB of headroom at 100 MiB per page.
        assert sizer.calculate_batch_size(bytes_per_item=100 * MiB) == 9

    def test_rejects_bad_item_size(self) -> None:
        with pytest.raises(ConfigurationError):
            sizer_on(FakeCard()).calculate_batch_size(bytes_per_item=0)

    def test_oom_ceiling_lives_in_the_handler(self) -> None:
        card = FakeCard(total=80 * GiB)
        manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
        device = manager.get_optimal_device("cuda:0")
        handler = OOMHandler(manager)
        sizer = AdaptiveBatchSizer(device, None, None, manager, prior_bytes_per_load=1.0, oom_handler=handler,
                                   work="pages")
        sizer.next_batch_size()
        sizer.record_oom(8, 8)
        assert sizer.ceiling == 7 == handler.ceiling(device, "pages")
        for _ in range(5):
            size = sizer.next_batch_size()
            assert size <= 7
            sizer.record_batch(size, size, 10, size / (size * 10.0))
        sizer.record_oom(3, 3)
        assert sizer.ceiling == 2 and sizer.next_batch_size() <= 2

    def test_fit_from_measurements_sizes_next_batch(self) -> None:
        # 10 GiB card, nothing used: budget 6.5 GiB; measured 100 MiB + 500 MiB per item.
        sizer = sizer_on(FakeCard(total=10 * GiB), BatchSizeConfig(max_batch_size=64, initial_batch_size=64))
        sizer.record_batch(2, 2, 1100 * MiB, 1.0)
        sizer.record_batch(4, 4, 2100 * MiB, 1.0)
        fit = sizer.fit()
        assert fit is not None and fit.bytes_per_load == pytest.approx(500 * MiB)
        assert sizer.memory_limit() == (int(6.5 * GiB) - 100 * MiB) // (500 * MiB)

    def test_oom_teaches_a_minimum_cost(self) -> None:
        sizer = sizer_on(FakeCard(total=10 * GiB), BatchSizeConfig(max_batch_size=64))
        assert sizer.memory_limit() == 64  # the spec prior thinks items are tiny
        sizer.record_oom(40, 40)  # budget 6.5 GiB did not hold 40 items
        assert sizer.memory_limit() <= 39

    def test_unresolvable_peaks_keep_the_prior(self) -> None:
        """Peaks the backend cannot resolve must not read as free memory."""
        sizer = sizer_on(FakeCard(total=10 * GiB), BatchSizeConfig(max_batch_size=64),
                         prior_bytes_per_load=float(GiB))
        for _ in range(6):
            size = sizer.next_batch_size()
            sizer.record_batch(size, size, None, size / (size * 10.0 + 1))  # always faster: wants to grow
        assert sizer.fit() is None
        assert sizer.next_batch_size() <= 6  # 6.5 GiB at the 1 GiB/item prior, never 64

    def test_crowded_card_runs_batches_of_one_and_says_so_once(self) -> None:
        messages: list[str] = []
        sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
        try:
            sizer = sizer_on(FakeCard(total=10 * GiB, others=8 * GiB), BatchSizeConfig(max_batch_size=64),
                             prior_bytes_per_load=1.0)
            sizes = []
            for _ in range(5):
                size = sizer.next_batch_size()
                sizes.append(size)
                sizer.record_batch(size, size, None, 0.01)
        finally:
            logger.remove(sink)
        assert sizes == [1, 1, 1, 1, 1]
        assert sizer.last_budget_bytes == 0
        assert sizer.budget_warning is not None and "80% in use" in sizer.budget_warning
        assert sum("batches run one item at a time" in m for m in messages) == 1

    def test_unreadable_device_stops_growth(self) -> None:
        backend = FakeBackend(cards=[FakeCard(total=80 * GiB)])
        manager = DeviceManager([backend, fake_cpu()])
        sizer = AdaptiveBatchSizer(manager.get_optimal_device("cuda:0"), None, None, manager,
                                   oom_handler=OOMHandler(manager), prior_bytes_per_load=1.0)
        size = sizer.next_batch_size()
        sizer.record_batch(size, size, 100, 0.1)
        backend.readable = False
        assert max(sizer.next_batch_size() for _ in range(3)) <= size  # the last size stands: no growth
        assert sizer.last_budget_bytes is None

    @pytest.mark.parametrize("pinned", [None, 8])
    def test_without_a_reading_probes_do_not_ratchet_the_size_down(self, pinned: int | None) -> None:
        # Larger batches are faster; the device cannot be read at all. The size must stay at the start
        # (no growth without a reading), not fall step by step to 1 as each smaller probe lowers the limit.
        backend = FakeBackend(cards=[FakeCard(total=80 * GiB)], readable=False)
        manager = DeviceManager([backend, fake_cpu()])
        sizer = AdaptiveBatchSizer(manager.get_optimal_device("cuda:0"), None,
                                   BatchSizeConfig(initial_batch_size=pinned), manager,
                                   oom_handler=OOMHandler(manager), prior_bytes_per_load=1.0)
        start = pinned or UNREADABLE_START
        sizes = drive(sizer, lambda size, _n: 10.0 * size, 80, noise=0.02)
        assert sizes[0] == start and max(sizes) == start
        assert sizer.record().current == start and sizes[-20:].count(start) >= 15

    def test_adjust_uses_monitor_and_ceiling(self) -> None:
        card = FakeCard(total=100 * GiB, others=90 * GiB)
        manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
        device = manager.get_optimal_device("cuda:0")
        monitor = MemoryMonitor(device, manager)
        sizer = AdaptiveBatchSizer(device, monitor, None, manager, oom_handler=OOMHandler(manager))
        monitor.take_snapshot()
        assert sizer.adjust_batch_size(16) == 12  # warning level: cut a quarter
        card.others = 40 * GiB
        monitor.take_snapshot()
        assert sizer.adjust_batch_size(8) == 15  # grow towards 75%
        sizer.record_oom(10, 10)
        assert sizer.adjust_batch_size(8) == 9


def cpu_sizer(total: int = 16 * GiB, others: int = 2 * GiB, config: BatchSizeConfig | None = None,
              prior: float = 1.0, elsewhere: float | None = None) -> AdaptiveBatchSizer:
    cpu = fake_cpu(total=total, others=others)
    cpu.elsewhere = elsewhere
    manager = DeviceManager([cpu])
    return AdaptiveBatchSizer(manager.cpu(), None, config, manager, oom_handler=OOMHandler(manager),
                              prior_bytes_per_load=prior)


def drive(sizer: AdaptiveBatchSizer, rate: Callable[[int, int], float], batches: int, *, noise: float = 0.0,
          seed: int = 0, slow: frozenset[int] = frozenset()) -> list[int]:
    """Run ``batches`` batches whose items/s come from ``rate(size, n)`` times
    log-normal noise; batches numbered in ``slow`` take twice as long."""
    rng = random.Random(seed)
    sizes = []
    for n in range(batches):
        size = sizer.next_batch_size()
        items_per_s = rate(size, n) * math.exp(rng.gauss(0.0, noise)) / (2.0 if n in slow else 1.0)
        sizer.record_batch(size, size, None, size / items_per_s)
        sizes.append(size)
    return sizes


def table(rates: dict[int, float]) -> Callable[[int, int], float]:
    return lambda size, _n: rates[size]


RISING = {1: 8.0, 2: 14.0, 4: 20.0, 8: 26.0, 16: 32.0, 32: 38.0}  # always faster
PLATEAU = {1: 8.0, 2: 14.0, 4: 20.0, 8: 26.0, 16: 26.0, 32: 26.0}  # no gain past 8
PEAK = {1: 8.0, 2: 14.0, 4: 20.0, 8: 24.0, 16: 20.0, 32: 15.0}  # the tiny models on a CPU: 4-8 best


class TestThroughputSearch:
    """Scripted timings with noise: decisions come from evidence, not one sample."""

    def test_one_slow_sample_does_not_stop_growth(self) -> None:
        sizer = cpu_sizer(config=BatchSizeConfig(initial_batch_size=4))
        sizes = drive(sizer, table(RISING), 60, noise=0.03, slow=frozenset({2, 3, 4, 5}))
        # The first usable samples at 8 (batches 2-5) took twice as long; growth went on regardless.
        assert sizes[0] == 4 and sizes[-1] == 32
        assert [c.size for c in sizer.record().chosen] == [4, 8, 16, 32]

    @pytest.mark.parametrize("seed", range(5))
    def test_a_real_plateau_stops_growth(self, seed: int) -> None:
        sizer = cpu_sizer(config=BatchSizeConfig(initial_batch_size=4))
        sizes = drive(sizer, table(PLATEAU), 400, noise=0.03, seed=seed)
        assert sizer.record().current in (8, 16)  # flat past 8: either, never on to 32 for nothing
        assert sizes[100:].count(32) <= 0.05 * 300  # 32 only as a probe
        assert sizes[100:].count(8) + sizes[100:].count(16) >= 0.9 * 300

    @pytest.mark.parametrize("seed", range(5))
    @pytest.mark.parametrize("where", ["cpu", "cuda"])
    def test_a_peak_is_found_from_below_and_from_above(self, where: str, seed: int) -> None:
        # From 2 on the CPU (growing), from the memory plan (32) on a card (shrinking).
        sizer = cpu_sizer(config=BatchSizeConfig(initial_batch_size=2)) if where == "cpu" else sizer_on(
            FakeCard(total=80 * GiB), prior_bytes_per_load=1.0)
        sizes = drive(sizer, table(PEAK), 300, noise=0.05, seed=seed)
        assert sizes[0] == (2 if where == "cpu" else 32)
        assert sizer.record().current == 8
        assert sizes[150:].count(8) >= 0.85 * 150

    @pytest.mark.parametrize("seed", range(5))
    def test_a_level_smaller_neighbour_is_looked_past(self, seed: int) -> None:
        # The start (8) sits on a level step one size wide (4 as fast as 8, within noise that keeps a
        # probe undecided); the best sizes lie past it. Comparing neighbours only, the search stays.
        step = {1: 10.0, 2: 10.0, 4: 7.6, 8: 7.6, 16: 7.4, 32: 6.2}
        sizer = cpu_sizer()
        sizes = drive(sizer, table(step), 400, noise=0.05, seed=seed)
        assert sizes[0] == 8 and sizer.record().current in (1, 2)
        assert sum(1 for s in sizes[200:] if s <= 2) >= 0.9 * 200

    @pytest.mark.parametrize("seed", range(5))
    def test_looking_past_a_level_neighbour_to_a_slower_size_costs_little(self, seed: int) -> None:
        # The same step, but the size past it is slower: looking past it is a short probe, then the step.
        step = {1: 5.0, 2: 7.0, 4: 7.6, 8: 7.6, 16: 7.4, 32: 6.2}
        sizer = cpu_sizer()
        sizes = drive(sizer, table(step), 400, noise=0.05, seed=seed)
        assert sizer.record().current in (4, 8)
        assert sum(1 for s in sizes[200:] if s in (4, 8)) >= 0.88 * 200

    def test_a_co_tenant_that_slows_large_batches_moves_the_size_down(self) -> None:
        calm = {4: 20.0, 8: 26.0, 16: 32.0, 32: 30.0}
        busy = {4: 18.0, 8: 20.0, 16: 12.0, 32: 8.0}  # from batch 300 on, large batches lose the most
        sizer = cpu_sizer()
        sizes = drive(sizer, lambda size, n: (calm if n < 300 else busy)[size], 500, noise=0.05, seed=1)
        assert sizes[250:300].count(16) >= 40  # settled at the peak before
        assert sizer.record().current == 8
        assert sizes[-100:].count(8) >= 85
        moved = next(c for c in sizer.record().chosen if c.batch >= 300)
        assert moved.size == 8 and moved.batch < 360  # found within a few probes, not after a long back-off

    @pytest.mark.parametrize("seed", range(5))
    def test_a_noisy_but_steady_machine_does_not_keep_restarting_the_search(self, seed: int) -> None:
        # Samples swinging by 35% (a busy laptop) move a 5-sample median by more than 25% all the time;
        # only a shift beyond that noise makes the neighbours due, so the best size keeps most batches.
        peak16 = {1: 8.0, 2: 14.0, 4: 20.0, 8: 26.0, 16: 32.0, 32: 24.0}
        sizer = cpu_sizer()
        sizes = drive(sizer, table(peak16), 600, noise=0.35, seed=seed)
        assert sizer.record().current == 16
        assert sum(1 for s in sizes[200:] if s != 16) <= 0.3 * 400

    def test_a_co_tenant_leaving_lets_it_grow_again(self) -> None:
        busy = {4: 18.0, 8: 20.0, 16: 12.0, 32: 8.0}
        calm = {4: 20.0, 8: 26.0, 16: 32.0, 32: 30.0}
        sizer = cpu_sizer()
        sizes = drive(sizer, lambda size, n: (busy if n < 300 else calm)[size], 450, noise=0.03, seed=2)
        assert sizes[250:300].count(8) >= 40
        assert sizer.record().current == 16 and sizes[-50:].count(16) >= 42

    def test_reprobing_happens_and_is_bounded(self) -> None:
        sizer = cpu_sizer()
        sizes = drive(sizer, table(PEAK), 3000, noise=0.02, seed=3)
        late = sizes[1000:]
        off = sum(1 for s in late if s != 8)
        assert 0 < off <= 0.03 * len(late)  # neighbours are still tried, on a small share of batches
        assert any(s != 8 for s in sizes[2500:])  # and not only early on
        # Back-off: the waits between probes of 16 grow.
        starts = [n for n in range(12, len(sizes)) if sizes[n] == 16 and 16 not in sizes[n - 12:n]]
        gaps = [b - a for a, b in pairwise(starts)]
        assert gaps[-1] >= 4 * gaps[0]

    def test_first_batch_comes_from_memory_where_a_reading_exists(self) -> None:
        # 10 GiB card, nothing used: budget 6.5 GiB at a prior of 500 MiB a page -> 13 pages first.
        assert sizer_on(FakeCard(total=10 * GiB), prior_bytes_per_load=float(500 * MiB)).next_batch_size() == 13
        # A card mostly used by others: what is left decides.
        crowded = sizer_on(FakeCard(total=10 * GiB, others=5 * GiB), prior_bytes_per_load=float(500 * MiB))
        assert crowded.next_batch_size() == 3
        # The CPU starts at CPU_START where memory allows, lower where it does not.
        assert cpu_sizer().next_batch_size() == CPU_START
        assert cpu_sizer(others=int(9.5 * GiB), prior=float(300 * MiB)).next_batch_size() == 3
        # A pinned first size is kept (memory still caps it).
        assert cpu_sizer(config=BatchSizeConfig(initial_batch_size=16)).next_batch_size() == 16

    @pytest.mark.parametrize(("elsewhere", "first"), [(0.1, CPU_START_IDLE), (0.9, CPU_START), (None, CPU_START)])
    def test_the_cpu_starts_from_how_busy_other_processes_keep_it(self, elsewhere: float | None,
                                                                   first: int) -> None:
        # Free cores: idle runs were fastest at 1-16, so the search starts lower; a busy core (or no
        # reading): at 8, one step from the 16-32 that busy runs were fastest at.
        assert CPU_START_IDLE < CPU_START
        assert cpu_sizer(elsewhere=elsewhere).next_batch_size() == first
        # Read once, for the first batch: a later change in load is the search's to follow.
        sizer = cpu_sizer(elsewhere=elsewhere)
        sizer.next_batch_size()
        sizer.manager.backend_for(sizer.device).elsewhere = 0.0 if elsewhere else 2.0  # type: ignore[attr-defined]
        assert sizer.next_batch_size() == first

    def test_without_a_reading_the_first_batch_is_small(self) -> None:
        backend = FakeBackend(cards=[FakeCard(total=80 * GiB)], readable=False)
        manager = DeviceManager([backend, fake_cpu()])
        sizer = AdaptiveBatchSizer(manager.get_optimal_device("cuda:0"), None, None, manager,
                                   oom_handler=OOMHandler(manager), prior_bytes_per_load=1.0)
        assert sizer.next_batch_size() == UNREADABLE_START

    def test_warm_ups_and_slow_measured_batches_are_not_rate_samples(self) -> None:
        sizer = cpu_sizer()
        sizer.record_batch(4, 4, None, 0.02)  # warm-up: first batch at this size, however fast
        for _ in range(3):
            sizer.record_batch(4, 4, None, 0.2)  # 20 items/s
        assert sizer.wants_measurement(4)  # measuring where it is costly: this batch's time is off
        sizer.record_batch(4, 4, 10 * MiB, 2.0)
        rate = next(r for r in sizer.record().rates if r.size == 4)
        assert (rate.samples, rate.median) == (3, pytest.approx(20.0))

    def test_a_batch_cut_short_is_a_sample_of_its_own_size(self) -> None:
        sizer = cpu_sizer()
        sizer.next_batch_size()
        sizer.record_batch(4, 4, None, 0.2)
        for _ in range(2):
            sizer.record_batch(2, 2, None, 0.25, full=False)  # the end of the items: 2 of a planned 4
        assert {r.size: r.samples for r in sizer.record().rates} == {2: 1}  # its first was its warm-up
        assert sizer.next_batch_size() != 2 and sizer.measurements[-1].batch_size == 2  # planned from 4 on

    def test_prepared_ahead_guesses_match_the_next_size(self) -> None:
        sizer = sizer_on(FakeCard(total=80 * GiB), prior_bytes_per_load=1.0)
        misses = 0
        size = sizer.next_batch_size()
        for _ in range(300):
            guess = sizer.predict_next(size)
            sizer.record_batch(size, size, 1000 * size, size / PEAK[size])
            size = sizer.next_batch_size()
            misses += guess != size
        assert misses <= 15

    def test_memory_taken_by_another_process_does_not_erase_what_was_measured(self) -> None:
        backend = fake_cpu(total=16 * GiB, others=2 * GiB)
        manager = DeviceManager([backend])
        sizer = AdaptiveBatchSizer(manager.cpu(), None, None, manager, oom_handler=OOMHandler(manager),
                                   prior_bytes_per_load=1.0)
        before = drive(sizer, table(PEAK), 80, noise=0.02)
        assert before[-10:] == [8] * 10
        backend.cards[0].others = 15 * GiB  # above the 65% line: batches of one, as the policy says
        crowded = drive(sizer, table(PEAK), 20, noise=0.02)
        assert set(crowded) == {1} and sizer.record().current == 1
        backend.cards[0].others = 2 * GiB
        after = drive(sizer, table(PEAK), 5, noise=0.02)
        assert after == [8] * 5  # straight back to the size measured best, no climb from 1
        assert [c.why for c in sizer.record().chosen][-2:] == [Why.MEMORY, Why.ROOM]
