"""The pure sizing arithmetic and the stateful sizer."""

from __future__ import annotations

import pytest

from ragged.errors import ConfigurationError
from ragged.gpu import (
    AdaptiveBatchSizer,
    BatchSizeConfig,
    DeviceManager,
    MemoryFit,
    MemoryInfo,
    MemoryMonitor,
    memory_budget,
    plan_batch_size,
)
from tests.fakes import FakeBackend, FakeCard, GiB, MiB, fake_cpu


def sizer_on(card: FakeCard, config: BatchSizeConfig | None = None, **kwargs: object) -> AdaptiveBatchSizer:
    manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
    return AdaptiveBatchSizer(manager.get_optimal_device("cuda:0"), None, config, manager, **kwargs)  # type: ignore[arg-type]


class TestBudget:
    def test_empty_card_matches_spec_formula(self) -> None:
        info = MemoryInfo(total=100 * GiB, free=100 * GiB, allocated=0, reserved=0)
        assert memory_budget(info, BatchSizeConfig()) == int(100 * GiB * 0.65)

    def test_memory_held_by_model_and_others_is_counted(self) -> None:
        # 100 GiB card, 30 GiB in use by everyone: headroom to 65% is 35 GiB.
        info = MemoryInfo(total=100 * GiB, free=70 * GiB, allocated=10 * GiB, reserved=10 * GiB)
        assert memory_budget(info, BatchSizeConfig()) == 35 * GiB

    def test_own_cache_counts_as_free(self) -> None:
        info = MemoryInfo(total=100 * GiB, free=70 * GiB, allocated=10 * GiB, reserved=20 * GiB)
        assert memory_budget(info, BatchSizeConfig()) == 45 * GiB

    def test_crowded_card_gives_zero(self) -> None:
        info = MemoryInfo(total=10 * GiB, free=1 * GiB, allocated=0, reserved=0)
        assert memory_budget(info, BatchSizeConfig()) == 0

    def test_never_more_than_free_less_margin(self) -> None:
        info = MemoryInfo(total=10 * GiB, free=10 * GiB, allocated=0, reserved=0)
        config = BatchSizeConfig(target_utilisation=1.0, safety_margin=0.0)
        assert memory_budget(info, config) == 10 * GiB


class TestFitAndPlan:
    def test_two_loads_fit_line(self) -> None:
        fit = MemoryFit.fit([(2, 300), (4, 500), (8, 900)])
        assert fit is not None
        assert fit.base_bytes == pytest.approx(100)
        assert fit.bytes_per_load == pytest.approx(100)

    def test_one_load_goes_through_origin(self) -> None:
        fit = MemoryFit.fit([(4, 400), (4, 480)])
        assert fit == MemoryFit(0.0, 120.0)

    def test_negative_intercept_falls_back_conservatively(self) -> None:
        fit = MemoryFit.fit([(2, 100), (4, 400)])
        assert fit == MemoryFit(0.0, 100.0)

    def test_nothing_to_fit(self) -> None:
        assert MemoryFit.fit([]) is None

    def test_plan_clamps(self) -> None:
        config = BatchSizeConfig(min_batch_size=2, max_batch_size=16)
        kw = {"base_bytes": 0.0, "bytes_per_load": 100.0, "load_per_item": 1.0, "config": config}
        assert plan_batch_size(budget_bytes=1000, **kw) == 10  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=10**6, **kw) == 16  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=50, **kw) == 2  # type: ignore[arg-type]
        assert plan_batch_size(budget_bytes=10**6, ceiling=5, **kw) == 5  # type: ignore[arg-type]

    def test_longer_items_get_smaller_batches(self) -> None:
        config = BatchSizeConfig(max_batch_size=64)
        one = plan_batch_size(budget_bytes=10**6, base_bytes=0, bytes_per_load=100, load_per_item=100, config=config)
        two = plan_batch_size(budget_bytes=10**6, base_bytes=0, bytes_per_load=100, load_per_item=200, config=config)
        assert (one, two) == (64, 50)

    @pytest.mark.parametrize(
        "kwargs",
        [{"min_batch_size": 0}, {"min_batch_size": 8, "max_batch_size": 4}, {"target_utilisation": 1.5},
         {"safety_margin": 0.8}, {"growth_factor": 1.0}],
    )
    def test_bad_config(self, kwargs: dict[str, float]) -> None:
        with pytest.raises(ConfigurationError):
            BatchSizeConfig(**kwargs)  # type: ignore[arg-type]


class TestSizer:
    def test_calculate_from_prior_and_real_free_memory(self) -> None:
        # 8 GiB card, 6 GiB used: headroom to 65% is 8*0.65-6 = -0.8 GiB -> min batch.
        assert sizer_on(FakeCard(total=8 * GiB, others=6 * GiB)).calculate_batch_size(bytes_per_item=100 * MiB) == 1
        # Empty 8 GiB card: 5.2 GiB / 200 MiB = 26 items.
        assert sizer_on(FakeCard(total=8 * GiB)).calculate_batch_size(bytes_per_item=200 * MiB) == 26
        # The spec's default prior is tiny, so the cap of 32 applies.
        assert sizer_on(FakeCard(total=8 * GiB)).calculate_batch_size() == 32

    def test_cpu_is_bounded_by_available_ram(self) -> None:
        manager = DeviceManager([fake_cpu(total=16 * GiB, others=int(9.5 * GiB))])
        sizer = AdaptiveBatchSizer(manager.cpu(), None, None, manager)
        # 16*0.65 - 9.5 = 0.9 GiB of headroom at 100 MiB per page.
        assert sizer.calculate_batch_size(bytes_per_item=100 * MiB) == 9

    def test_rejects_bad_item_size(self) -> None:
        with pytest.raises(ConfigurationError):
            sizer_on(FakeCard()).calculate_batch_size(bytes_per_item=0)

    def test_growth_doubles_while_faster_then_settles_on_best(self) -> None:
        sizer = sizer_on(FakeCard(total=80 * GiB), prior_bytes_per_load=1.0)
        sizes = []
        # Throughput (items/s) by size: grows until 8, flat after.
        rate = {2: 10.0, 4: 18.0, 8: 30.0, 16: 30.5}
        for _ in range(6):
            size = sizer.next_batch_size()
            sizes.append(size)
            sizer.record_batch(size, size, 1000 * size, size / rate[size])
        assert sizes == [2, 4, 8, 16, 8, 8]

    def test_oom_caps_every_later_batch(self) -> None:
        sizer = sizer_on(FakeCard(total=80 * GiB), prior_bytes_per_load=1.0)
        sizer.next_batch_size()
        sizer.record_oom(8, 8)
        assert sizer.ceiling == 7
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

    def test_adjust_uses_monitor_and_ceiling(self) -> None:
        card = FakeCard(total=100 * GiB, others=90 * GiB)
        manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
        device = manager.get_optimal_device("cuda:0")
        monitor = MemoryMonitor(device, manager)
        sizer = AdaptiveBatchSizer(device, monitor, None, manager)
        monitor.take_snapshot()
        assert sizer.adjust_batch_size(16) == 12  # warning level: cut a quarter
        card.others = 40 * GiB
        monitor.take_snapshot()
        assert sizer.adjust_batch_size(8) == 15  # grow towards 75%
        sizer.record_oom(10, 10)
        assert sizer.adjust_batch_size(8) == 9
