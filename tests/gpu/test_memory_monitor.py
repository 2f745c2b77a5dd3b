"""Snapshots, bounded history, edge-triggered alerts, recommendations."""

from __future__ import annotations

import pytest

from ragged.errors import ConfigurationError
from ragged.gpu import DeviceManager, MemoryLevel, MemoryMonitor, MemorySnapshot
from tests.fakes import FakeBackend, FakeCard, GiB, fake_cpu


def monitor_on(card: FakeCard, **kwargs: object) -> tuple[MemoryMonitor, FakeCard]:
    manager = DeviceManager([FakeBackend(cards=[card]), fake_cpu()])
    return MemoryMonitor(manager.get_optimal_device("cuda:0"), manager, **kwargs), card  # type: ignore[arg-type]


def set_used_pct(card: FakeCard, pct: float) -> None:
    card.others = int(card.total * pct / 100)


def test_snapshot_fields() -> None:
    monitor, _ = monitor_on(FakeCard(total=10 * GiB, others=2 * GiB, allocated=1 * GiB, reserved=3 * GiB))
    snap = monitor.take_snapshot()
    assert (snap.total, snap.free, snap.allocated, snap.reserved) == (10 * GiB, 5 * GiB, 1 * GiB, 3 * GiB)
    assert snap.utilisation_pct == pytest.approx(50.0)
    assert monitor.latest is snap


def test_thresholds_fire_once_per_rise_and_rearm() -> None:
    warnings: list[MemorySnapshot] = []
    criticals: list[MemorySnapshot] = []
    monitor, card = monitor_on(FakeCard(total=100 * GiB), on_warning=warnings.append, on_critical=criticals.append)
    sequence = [50, 84.9, 85, 90, 95, 99, 80, 86, 96]
    levels = []
    for pct in sequence:
        set_used_pct(card, pct)
        monitor.take_snapshot()
        levels.append(monitor.level)
    assert [round(s.utilisation_pct, 1) for s in warnings] == [85.0, 86.0]
    assert [round(s.utilisation_pct, 1) for s in criticals] == [95.0, 96.0]
    assert levels[-1] is MemoryLevel.CRITICAL


def test_extra_callbacks_and_custom_thresholds() -> None:
    seen: list[float] = []
    monitor, card = monitor_on(FakeCard(total=100 * GiB), warning_threshold_pct=60, critical_threshold_pct=70)
    monitor.add_warning_callback(lambda s: seen.append(s.utilisation_pct))
    monitor.add_critical_callback(lambda s: seen.append(-s.utilisation_pct))
    for pct in (59, 61, 71):
        set_used_pct(card, pct)
        monitor.take_snapshot()
    assert [round(x) for x in seen] == [61, -71]


def test_history_is_bounded_and_clearable() -> None:
    monitor, _ = monitor_on(FakeCard())
    snaps = [monitor.take_snapshot() for _ in range(150)]
    assert len(monitor.history) == 100
    assert monitor.history[0] is snaps[50]
    monitor.clear_history()
    assert monitor.history == [] and monitor.latest is None and monitor.level is MemoryLevel.NORMAL


@pytest.mark.parametrize(
    ("used_pct", "current", "expected"),
    [
        (97, 16, 8),  # critical: halve
        (90, 16, 12),  # warning: cut a quarter
        (75, 16, 16),  # at target: keep
        (50, 8, 12),  # below: grow in proportion
        (10, 8, 16),  # far below: at most double
        (96, 1, 1),  # never below one
    ],
)
def test_recommended_batch_size(used_pct: float, current: int, expected: int) -> None:
    monitor, card = monitor_on(FakeCard(total=100 * GiB))
    set_used_pct(card, used_pct)
    monitor.take_snapshot()
    assert monitor.get_recommended_batch_size(current, target_utilisation_pct=75) == expected


def test_recommendation_rejects_bad_batch() -> None:
    monitor, _ = monitor_on(FakeCard())
    with pytest.raises(ConfigurationError):
        monitor.get_recommended_batch_size(0)


@pytest.mark.parametrize(("warning", "critical"), [(0, 95), (90, 80), (85, 101)])
def test_bad_thresholds(warning: float, critical: float) -> None:
    with pytest.raises(ConfigurationError):
        monitor_on(FakeCard(), warning_threshold_pct=warning, critical_threshold_pct=critical)
