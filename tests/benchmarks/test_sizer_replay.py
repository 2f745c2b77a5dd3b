"""The sizer replay: calls run at the profile's rates, measured batches cost, and a clear peak is found."""

from __future__ import annotations

import random

import pytest

from benchmarks.sizer_replay import MEASURED_SLOWER, PROFILES, call, new_sizer, replay

FLAT = {s: 10.0 for s in (1, 2, 4, 8, 16, 32)}


def test_a_call_runs_at_the_profile_rate_less_its_measured_batches() -> None:
    sizer, rng = new_sizer(), random.Random(0)
    first, *later = [call(sizer, FLAT, 64, 0.0, rng) for _ in range(6)]
    # The first call measures its first batches' peaks (each a quarter slower); later ones one in many.
    assert first < 10.0 / (1 + (MEASURED_SLOWER - 1) / 2)
    assert max(later) == pytest.approx(10.0)
    assert all(10.0 / MEASURED_SLOWER < rate <= 10.0 for rate in later)


@pytest.mark.parametrize("seed", range(3))
def test_a_clear_peak_is_found(seed: int) -> None:
    peak = {1: 4.0, 2: 6.0, 4: 8.0, 8: 10.0, 16: 14.0, 32: 9.0}
    assert replay(peak, 0.02, seed, pages=64, learn=4, rounds=5) >= 0.9


def test_every_profile_covers_the_benchmark_ladder() -> None:
    assert len(PROFILES) == 14
    assert all(sorted(rates) == [1, 2, 4, 8, 16, 32] for rates in PROFILES.values())
