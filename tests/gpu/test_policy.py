"""The one memory policy: the line, budgets, admission, levels."""

from __future__ import annotations

import random

import pytest

from ragged.errors import ConfigurationError
from ragged.gpu import MemoryInfo, MemoryLevel, MemoryPolicy
from tests.fakes import GiB, MiB


def info(total: int, free: int, allocated: int = 0, reserved: int = 0) -> MemoryInfo:
    return MemoryInfo(total=total, free=free, allocated=allocated, reserved=reserved)


class TestBudget:
    def test_empty_device_gets_the_spec_formula(self) -> None:
        assert MemoryPolicy().batch_budget(info(100 * GiB, 100 * GiB)) == int(100 * GiB * 0.65)

    def test_what_is_in_use_counts_against_the_line(self) -> None:
        # 30 GiB in use by the model and others: 65 - 30 = 35 GiB left under the line.
        assert MemoryPolicy().batch_budget(info(100 * GiB, 70 * GiB, 10 * GiB, 10 * GiB)) == 35 * GiB

    def test_our_unused_cache_counts_as_free(self) -> None:
        assert MemoryPolicy().batch_budget(info(100 * GiB, 70 * GiB, 10 * GiB, 20 * GiB)) == 45 * GiB

    def test_above_the_line_is_zero_not_negative(self) -> None:
        assert MemoryPolicy().batch_budget(info(10 * GiB, 2 * GiB)) == 0

    def test_unknown_reading_is_unknown_not_zero(self) -> None:
        policy = MemoryPolicy()
        assert policy.batch_budget(None) is None
        assert policy.room_after(None, GiB) is None
        assert policy.admits(None, 1, 0) is False  # never load blind

    def test_budget_never_exceeds_free_memory(self) -> None:
        """The old second term (free x (1 - margin)) never bound; the line alone keeps budgets under free."""
        rng = random.Random(0)
        for _ in range(20_000):
            total = rng.randint(1, 10**12)
            free = rng.randint(0, total)
            policy = MemoryPolicy(target_utilisation=rng.uniform(0.05, 1.0), safety_margin=0.0)
            budget = policy.batch_budget(info(total, free))
            assert budget is not None and 0 <= budget <= free

    def test_target_moves_the_line(self) -> None:
        assert MemoryPolicy(target_utilisation=0.9).batch_budget(info(10 * GiB, 10 * GiB)) == int(8 * GiB)


class TestAdmission:
    def test_model_needs_room_for_one_item(self) -> None:
        policy = MemoryPolicy()
        card = info(8 * GiB, int(7.5 * GiB))  # line 5.2 GiB, 0.5 GiB used: 4.7 GiB under it
        assert policy.admits(card, 4 * GiB, 500 * MiB)
        assert not policy.admits(card, 4 * GiB, 800 * MiB)  # the model fits, its work would not
        assert not policy.admits(card, int(5.5 * GiB), 0)  # ColPali (3 B) in bf16 on an 8 GiB card
        assert MemoryPolicy(target_utilisation=0.9).admits(card, int(5.5 * GiB), 100 * MiB)

    def test_room_after_is_the_budget_left(self) -> None:
        assert MemoryPolicy().room_after(info(10 * GiB, 10 * GiB), 4 * GiB) == int(6.5 * GiB) - 4 * GiB


@pytest.mark.parametrize(("pct", "level"), [(84.9, MemoryLevel.NORMAL), (85, MemoryLevel.WARNING),
                                            (94.9, MemoryLevel.WARNING), (95, MemoryLevel.CRITICAL)])
def test_levels(pct: float, level: MemoryLevel) -> None:
    assert MemoryPolicy().level(pct) is level


@pytest.mark.parametrize("kwargs", [{"target_utilisation": 1.5}, {"target_utilisation": 0},
                                    {"safety_margin": 0.8}, {"warning_pct": 96}, {"warning_pct": 0}])
def test_bad_policies(kwargs: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        MemoryPolicy(**kwargs)


def test_describe() -> None:
    assert MemoryPolicy().describe() == "target 75%, margin 10% (line 65%)"
