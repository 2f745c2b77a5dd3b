"""The throughput search on its own: verdicts from paired samples, the ladder, the record."""

from __future__ import annotations

import math
from itertools import pairwise

import pytest
from loguru import logger

from ragged.gpu.size_search import BACKOFF_START, PAIRS_MAX, PROBE_MAX_BATCHES, SizeSearch
from ragged.gpu.throughput import Verdict, Why, compare


def logs(*ratios: float) -> list[float]:
    return [math.log(r) for r in ratios]


class TestCompare:
    def test_clear_gain_and_clear_loss(self) -> None:
        assert compare(logs(1.2, 1.25, 1.18, 1.22), 0.03) is Verdict.FASTER
        assert compare(logs(0.8, 0.82, 0.79, 0.81), 0.03) is Verdict.SLOWER

    def test_one_outlier_does_not_decide(self) -> None:
        assert compare(logs(1.2, 0.4, 1.22, 1.19), 0.03) is Verdict.FASTER
        assert compare(logs(1.0, 1.01, 0.99, 3.0), 0.03) is Verdict.SAME

    def test_within_the_gain_is_the_same(self) -> None:
        assert compare(logs(1.01, 0.995, 1.0, 1.02), 0.03) is Verdict.SAME

    def test_noise_wider_than_the_difference_is_unsure(self) -> None:
        # A median gain of ~10% inside samples that swing by +-40%: not shown.
        assert compare(logs(1.5, 0.7, 1.1, 1.4, 0.75, 1.1), 0.03) is Verdict.UNSURE

    def test_the_last_look_takes_the_side_the_evidence_leans_to(self) -> None:
        leaning = [-0.3, -0.2, -0.06, 0.0, 0.2, 0.2, 0.4, 0.45, 0.5, 0.6]  # median +0.2, noisy
        assert compare(leaning, 0.03) is Verdict.UNSURE
        assert compare(leaning, 0.03, last=True) is Verdict.FASTER
        assert compare([-x for x in leaning], 0.03, last=True) is Verdict.SLOWER
        assert compare([x - 0.2 for x in leaning], 0.03, last=True) is Verdict.UNSURE  # no lean: stay

    def test_the_last_look_takes_a_smaller_neighbour_that_is_as_fast(self) -> None:
        # A smaller size needs only to be as fast (within the gain). Leaning faster (+5%) inside noise
        # too wide to show a gain: at the last look one standard error below its median is still within
        # the gain, so it is taken for its memory; a larger size at the same figures is not.
        leaning = [-0.1, -0.05, 0.0, 0.03, 0.05, 0.05, 0.08, 0.12, 0.15, 0.2]
        assert compare(leaning, 0.03, larger=False) is Verdict.UNSURE
        assert compare(leaning, 0.03, last=True, larger=False) is Verdict.SAME
        assert compare(leaning, 0.03, last=True, larger=True) is Verdict.UNSURE
        # Leaning slower (-3%) inside the same noise: not shown as fast, so the incumbent stays.
        assert compare([x - 0.08 for x in leaning], 0.03, last=True, larger=False) is Verdict.UNSURE

    def test_a_neighbour_that_cannot_be_chosen_is_behind(self) -> None:
        # About 10% slower inside +-8% noise: three pairs do not show it slower, but they do show
        # that it cannot be chosen, whichever side of the incumbent it is on.
        slower = logs(0.8, 0.95, 0.88)
        assert compare(slower, 0.03) is Verdict.UNSURE
        assert compare(slower, 0.03, larger=True) is Verdict.BEHIND
        assert compare(slower, 0.03, larger=False) is Verdict.BEHIND
        # As fast: a larger size needs a gain it has not got, a smaller one needs only that speed.
        level = logs(0.97, 1.02, 1.0)
        assert compare(level, 0.03, larger=True) is Verdict.BEHIND
        assert compare(level, 0.03, larger=False) is Verdict.UNSURE
        assert compare(logs(1.2, 1.25, 1.18), 0.03, larger=True) is Verdict.FASTER  # a gain is still a gain

    def test_nothing_is_unsure(self) -> None:
        assert compare([], 0.03) is Verdict.UNSURE


def run(search: SizeSearch, rate: dict[int, float], batches: int, limit: int = 64) -> list[int]:
    sizes = []
    for _ in range(batches):
        size = search.next_size(limit)
        sizes.append(size)
        search.observe(size, rate[size])
    return sizes


class TestSearch:
    def test_ladder_steps_and_bounds(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        assert (search.up(4, 64), search.up(4, 6), search.up(6, 6)) == (8, 6, None)
        assert (search.down(8), search.down(3), search.down(1)) == (4, 2, None)
        assert SizeSearch(growth_factor=1.2, min_gain=0.03, min_size=1).up(2, 64) == 3  # always a step

    def test_warm_up_then_paired_probe_then_a_move(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        sizes = run(search, {2: 10.0, 4: 20.0, 8: 30.0, 16: 31.0}, 9)
        # 4 warms up, 8 warms up, then 8/4 alternate until three pairs decide for 8; 16 is next.
        assert sizes == [4, 8, 8, 4, 8, 4, 8, 4, 16]
        assert search.incumbent == 8
        chosen = search.record().chosen
        assert [(c.size, c.why) for c in chosen] == [(4, Why.START), (8, Why.FASTER)]

    def test_a_probe_that_gets_no_usable_pairs_ends(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        search.observe(search.next_size(64), 20.0)
        for _ in range(PROBE_MAX_BATCHES):
            search.observe(search.next_size(64), 25.0, usable=False)  # e.g. every one measured
        assert search.incumbent == 4
        assert search.next_size(64) == 2  # the up probe ended unsure; down is next

    def test_a_loser_waits_before_it_is_tried_again(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=4)
        search.begin(4)
        sizes = run(search, {4: 20.0, 8: 10.0}, 200)
        starts = [n for n in range(1, len(sizes)) if sizes[n] == 8 and sizes[n - 1] == 4 and 8 not in sizes[n - 3:n]]
        gaps = [b - a for a, b in pairwise(starts)]
        assert len(starts) >= 3 and gaps[0] >= BACKOFF_START
        assert all(later > earlier for earlier, later in pairwise(gaps))  # doubling waits

    def test_prediction_matches_the_next_choice(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        rate = {1: 5.0, 2: 10.0, 4: 20.0, 8: 26.0, 16: 24.0, 32: 20.0}
        misses = 0
        size = search.next_size(32)
        for _ in range(400):
            guess = search.predict_after(size, 32)
            search.observe(size, rate[size])
            size = search.next_size(32)
            misses += guess != size
        assert misses <= 400 * 0.05  # only where a probe's verdict changes the size

    def test_a_memory_limit_below_the_choice_moves_it_after_a_streak(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(16)
        assert search.next_size(8) == 8 and search.incumbent == 16  # one small limit: held, not learnt
        for _ in range(4):
            search.observe(8, 10.0)
            search.next_size(8)
        assert search.incumbent == 8 and search.record().chosen[-1].why is Why.MEMORY
        assert search.predict_after(8, 12) == 4  # below the old choice the search goes on (probing 4)
        assert search.predict_after(8, 64) == 16
        assert search.next_size(64) == 16  # room again: the size measured before comes straight back
        assert search.record().chosen[-1].why is Why.ROOM

    def test_a_probe_above_a_falling_limit_is_dropped(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        search.observe(search.next_size(64), 20.0)
        assert search.next_size(64) == 8  # probing 8
        search.observe(8, 30.0)
        assert search.predict_after(4, 2) == 2  # memory below the choice: the limit it is
        assert search.next_size(6) == 6  # 8 no longer fits: the step up is now 6
        assert search.incumbent == 4 and search.probes == 2

    def test_each_decision_is_logged(self) -> None:
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
        try:
            search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1, name="cpu pages")
            search.begin(4)
            run(search, {2: 10.0, 4: 20.0, 8: 30.0, 16: 30.3}, 40)
        finally:
            logger.remove(sink)
        assert any("cpu pages" in x and "size 8 vs 4: faster" in x for x in lines)
        assert any("size 16 vs 8: same" in x for x in lines)
        record = search.record()
        assert record.current == 8 and record.probes >= 3
        assert {r.size for r in record.rates} >= {4, 8, 16} and "8 (faster" in record.describe()
        assert record.as_dict()["chosen"][-1] == {"batch": 8, "size": 8, "why": "faster"}

    @pytest.mark.parametrize("pairs", [PAIRS_MAX])
    def test_undecided_probes_end_at_the_pair_limit(self, pairs: int) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=4)
        search.begin(4)
        swing = iter([1.6, 0.6] * 100)  # the candidate swings +-: never shown faster
        sizes = []
        for _ in range(2 + 2 * pairs):
            size = search.next_size(64)
            sizes.append(size)
            search.observe(size, 20.0 * (next(swing) if size == 8 else 1.0))
        assert search.incumbent == 4 and search.next_size(64) == 4  # ended as not faster, 8 waits

    def test_a_slower_neighbour_is_left_after_few_pairs(self) -> None:
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        swing = iter([1.12, 0.85, 1.0] * 10)  # 8 runs 10% slower than 4, inside +-15% noise
        sizes = []
        for _ in range(12):
            size = search.next_size(64)
            sizes.append(size)
            search.observe(size, {2: 10.0, 4: 20.0}.get(size) or 18.0 * next(swing))
        # Three pairs cannot show 8 slower (that took all ten), but they show it cannot gain 3%:
        # its probe ends there, and the size below is tried next.
        assert sizes[:9] == [4, 8, 8, 4, 8, 4, 8, 4, 2]
        assert search.incumbent == 4

    @pytest.mark.parametrize(("shift", "chosen"), [(1.0, 2), (0.9, 4)])
    def test_a_smaller_neighbour_is_taken_at_the_last_look_when_it_is_as_fast(self, shift: float,
                                                                               chosen: int) -> None:
        # 2 leans 6% faster than 4 inside a +-20% swing that never shows a gain: at its last pair it is taken
        # (as fast, for less memory). Shifted 10% slower, the same swing leaves 4 in place.
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        swing = iter([1.0] + [1.06, 1.20, 0.92] * 20)  # its warm-up, then the pairs' halves
        lines: list[str] = []
        sink = logger.add(lambda m: lines.append(str(m)), level="DEBUG", format="{message}")
        try:
            for _ in range(60):
                size = search.next_size(64)
                search.observe(size, {4: 20.0, 8: 10.0}.get(size) or 20.0 * shift * next(swing))
                if any("size 2 vs 4" in x for x in lines):
                    break
        finally:
            logger.remove(sink)
        assert search.incumbent == chosen
        assert any(f"size 2 vs 4: {'same' if chosen == 2 else 'unsure'}" in x and f"{PAIRS_MAX} pairs" in x
                   for x in lines)

    def test_a_smaller_neighbour_as_fast_is_not_left_early(self) -> None:
        # A smaller size needs only to be as fast. A level one swinging +-1.8% is not behind (a larger one at
        # that speed would be, after 2 pairs); once enough pairs show it the same, it is kept for its memory.
        search = SizeSearch(growth_factor=2.0, min_gain=0.03, min_size=1)
        search.begin(4)
        swing = iter([1.0] + [1.018, 0.982, 1.0] * 20)  # its warm-up, then the pairs' halves
        for _ in range(40):
            size = search.next_size(64)
            search.observe(size, {4: 20.0, 8: 10.0}.get(size) or 20.0 * next(swing))
            if search.incumbent != 4:
                break
        assert search.incumbent == 2 and search.record().chosen[-1].why is Why.SMALLER
        # In its first probe (after 8's probe and its own warm-up), not after being left and waiting.
        assert search.record().chosen[-1].batch <= 8 + 1 + 2 * PAIRS_MAX
