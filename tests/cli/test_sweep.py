"""The benchmark's summaries and chart, from made-up rounds (no model runs)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragged.cli.sweep import ADAPTIVE, FRESH, Sweep, SweepRow, batch_ladder, size_runs

MiB = 1024**2


def sweep() -> Sweep:
    rows = [SweepRow(f"fixed {b}", b, (10.0 + b, 12.0 + b, 9.0 + b) if b <= 8 else (30.0 - b, 31.0 - b, 29.0 - b),
                     b * 10 * MiB, 0) for b in batch_ladder(32)]
    rows.append(SweepRow(ADAPTIVE, None, (19.0, 18.5, 20.0), 70 * MiB, 0, 9000 * MiB, ((8, 8, 8, 8), (8, 4, 8, 4, 8)),
                         (4, 8, 8)))
    rows.append(SweepRow(FRESH, None, (17.0, 16.0, 18.0), 72 * MiB, 0, 9000 * MiB, ((4, 8, 8, 8, 4),) * 3, (4, 8)))
    return Sweep(rows, None, 3)


def test_ladder_and_size_runs() -> None:
    assert batch_ladder(32) == [1, 2, 4, 8, 16, 32] and batch_ladder(6) == [1, 2, 4]
    assert size_runs([4, 8, 8, 8, 4, 16, 16]) == "4 8x3 4 16x2"
    assert size_runs([]) == ""


def test_median_spread_best_and_ratio() -> None:
    result = sweep()
    best = result.best_fixed
    assert best is not None and best.batch == 8 and best.pages_per_second == 18.0  # 18, 20, 17: median 18
    assert best.spread == (17.0, 20.0)
    adaptive = result.row(ADAPTIVE)
    assert adaptive is not None and adaptive.pages_per_second == 19.0
    assert result.ratio(ADAPTIVE) == pytest.approx(19.0 / 18.0)
    assert adaptive.typical_batch == 8  # 56 of its 64 timed pages
    assert adaptive.as_dict()["slowest"] == 18.5
    assert SweepRow("fixed 32", 32, (), None, 1).pages_per_second == 0.0  # ran out of memory: no rounds


def test_ratio_pairs_the_rounds() -> None:
    # Round 3 ran while another process took the machine: both slowed. Pairing rounds cancels that out
    # (ratios 0.9, 0.967, 0.5: median 0.9); the ratio of the medians (10 / 20) would not.
    rows = [SweepRow("fixed 8", 8, (10.0, 30.0, 20.0), None, 0), SweepRow(ADAPTIVE, None, (9.0, 29.0, 10.0), None, 0)]
    assert Sweep(rows).ratio(ADAPTIVE) == pytest.approx(0.9)
    uneven = [rows[0], SweepRow(ADAPTIVE, None, (9.0, 29.0), None, 0)]  # rounds that do not pair: medians
    assert Sweep(uneven).ratio(ADAPTIVE) == pytest.approx(19.0 / 20.0)
    out_of_memory = SweepRow("fixed 32", 32, (), None, 1)  # no rounds: nothing to compare, not 0
    assert Sweep([rows[0], out_of_memory]).ratio("fixed 32") is None


def test_chart_labels_sizes_as_integers_and_shows_adaptive_on_both_panels(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    from ragged.cli.sweep import plot_sweep, sweep_figure

    fig = sweep_figure(sweep(), "t")
    speed, memory, sizes = fig.axes
    for panel in (speed, memory):
        assert [t.get_text() for t in panel.get_xticklabels()] == ["1", "2", "4", "8", "16", "32"]
        labels = panel.get_legend_handles_labels()[1]
        assert any(label.startswith(ADAPTIVE) for label in labels)
        assert any(label.startswith(FRESH) for label in labels)
    assert [t.get_text() for t in sizes.get_yticklabels()] == ["1", "2", "4", "8", "16", "32"]
    over_time = sizes.get_lines()[0].get_ydata()
    assert list(over_time) == [4, 8, 8, 8, 8, 8, 8, 8, 4, 8, 4, 8]  # warm-up run, then the rounds
    chart = tmp_path / "c.png"
    plot_sweep(sweep(), chart, "t")
    assert chart.read_bytes()[:4] == b"\x89PNG"


def test_level_with_the_best_means_the_rounds_do_not_show_it_slower() -> None:
    best = SweepRow("fixed 8", 8, (30.0, 31.0, 29.0, 32.0, 30.0), None, 0)
    won_one = SweepRow("fixed 4", 4, (29.0, 31.5, 28.0, 31.0, 29.5), None, 0)  # lost 4 of 5: chance does that (19%)
    lost_all = SweepRow("fixed 16", 16, (29.9, 30.9, 28.9, 31.9, 29.9), None, 0)  # lost 5 of 5 by a hair: 3%
    adaptive = SweepRow(ADAPTIVE, None, (28.0, 29.0, 30.0, 31.0, 29.0), None, 0)  # lost 4: level
    result = Sweep([best, won_one, lost_all, adaptive], None, 5)
    assert result.level_sizes == [8, 4]
    assert result.level_with_best(ADAPTIVE) is True and result.level_with_best("fixed 16") is False
    assert Sweep([best, SweepRow(ADAPTIVE, None, (28.0, 29.0), None, 0)]).level_with_best(ADAPTIVE) is None
    ahead = SweepRow(ADAPTIVE, None, tuple(r * 1.1 for r in best.rates), None, 0)  # won every round: not slower
    assert Sweep([best, ahead]).level_with_best(ADAPTIVE) is True
