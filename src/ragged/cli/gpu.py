"""``ragged gpu``: what the devices are, how full they are, what batch fits.

``ragged.gpu`` (and so torch) is imported inside each command, so that
``ragged --help`` stays fast.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ragged.cli.output import err, fail, gib, out, plain, safe
from ragged.gpu.registry import device_choices

if TYPE_CHECKING:
    from rich.table import Table

    from ragged.cli.sweep import Sweep
    from ragged.gpu import DeviceInfo, DeviceManager, MemoryMonitor


@dataclass(frozen=True)
class DeviceRow:
    """One line of ``ragged gpu list`` (bytes)."""

    device: str
    name: str
    total_bytes: int
    free_bytes: int | None
    arch: str | None
    auto: bool


@click.group()
def gpu() -> None:
    """Devices, memory and batch sizes."""


@gpu.command("list", short_help="Every device and which one auto picks.")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_devices(as_json: bool) -> None:
    """Every device, its memory, and which one auto-selection picks."""
    from rich.table import Table

    from ragged.gpu import default_device_manager

    manager = default_device_manager()
    chosen = manager.get_optimal_device()
    rows = [DeviceRow(d.label, d.name, d.total_memory, manager.free_bytes(d), d.arch, d.same_device(chosen))
            for d in manager.devices]
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    table = Table(title=f"Devices (detected in {manager.detection_seconds * 1e3:.1f} ms)")
    for column in ("device", "name", "total", "free", "arch", "auto"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.device, plain(row.name), gib(row.total_bytes), gib(row.free_bytes), row.arch or "-",
                      "[bold green]<- auto[/]" if row.auto else "")
    out.print(table)


def _processes(manager: DeviceManager, device: DeviceInfo) -> str:
    found = manager.processes(device)
    if found is None:
        return "not reported for this kind of device"
    if not found:
        return "none"
    return ", ".join(f"{safe(p.name)} (pid {p.pid}) {gib(p.used_bytes)}" for p in found[:5])


@gpu.command(short_help="Details of DEVICE.")
@click.argument("device", default="auto")
def info(device: str) -> None:
    """Details of DEVICE (auto, or a device such as cpu or cuda:1; see 'ragged gpu list')."""
    from rich.table import Table

    from ragged.gpu import MemoryPolicy, default_device_manager

    manager = default_device_manager()
    chosen = manager.get_optimal_device(device)
    mem = manager.get_device_memory_info(chosen)
    policy = MemoryPolicy()
    own = "resident memory of this ragged process" if not chosen.is_accelerator else "allocated by this process"
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in (
        ("device", chosen.label), ("name", safe(chosen.name)), ("total", gib(mem.total)), ("free", gib(mem.free)),
        ("used by all processes", f"{gib(mem.used)} ({mem.utilisation_pct:.1f}%)"),
        (own, gib(mem.allocated)),
        ("largest users", _processes(manager, chosen)),
        ("batch budget now", f"{gib(policy.batch_budget(mem))} ({policy.describe()})"),
        ("arch", chosen.arch or "-"),
        ("bf16", "yes" if manager.supports_bf16(chosen) else "no"),
        ("embedding dtype", manager.compute_dtype(chosen)),
    ):
        table.add_row(key, value)
    out.print(table)


def _stats_table(monitor: MemoryMonitor, manager: DeviceManager) -> Table:
    from rich.table import Table

    snap = monitor.take_snapshot()
    level = monitor.classify(snap.utilisation_pct)
    style = {"normal": "green", "warning": "yellow", "critical": "bold red"}[level.value]
    table = Table(title=f"{safe(monitor.device)} memory (warning {monitor.warning_threshold_pct:.0f}%, "
                        f"critical {monitor.critical_threshold_pct:.0f}%)")
    for column in ("total", "used", "free", "utilisation", "level", "largest users"):
        table.add_column(column)
    table.add_row(gib(snap.total), gib(snap.used), gib(snap.free), f"[{style}]{snap.utilisation_pct:.1f}%[/]",
                  f"[{style}]{level.value}[/]", _processes(manager, monitor.device))
    return table


@gpu.command(short_help="Memory of a device and who uses it.")
@click.option("--device", default="auto", help=f"{device_choices()}.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, help="Seconds between refreshes.")
@click.option("--count", type=click.IntRange(min=1), default=None, help="With --watch: stop after this many.")
@click.option("--warning", type=click.FloatRange(1, 100), default=85.0, help="Warning level, % used.")
@click.option("--critical", type=click.FloatRange(1, 100), default=95.0, help="Critical level, % used.")
@click.option("--json", "as_json", is_flag=True, help="Print one reading as JSON.")
def stats(device: str, watch: bool, interval: float, count: int | None, warning: float, critical: float,
          as_json: bool) -> None:
    """Memory readings of a device and who uses it, with warning and critical levels marked."""
    from rich.live import Live

    from ragged.gpu import MemoryMonitor, default_device_manager

    manager = default_device_manager()
    monitor = MemoryMonitor(manager.get_optimal_device(device), manager, warning_threshold_pct=warning,
                            critical_threshold_pct=critical)
    if as_json:
        snap = monitor.take_snapshot()
        procs = manager.processes(monitor.device)
        out.print_json(json.dumps({
            "device": monitor.device.label, "total_bytes": snap.total, "used_bytes": snap.used,
            "free_bytes": snap.free, "utilisation_pct": round(snap.utilisation_pct, 2),
            "level": monitor.classify(snap.utilisation_pct).value,
            "processes": None if procs is None else [asdict(p) for p in procs],
        }))
        return
    if not watch:
        out.print(_stats_table(monitor, manager))
        return
    refreshes = 1
    try:
        with Live(_stats_table(monitor, manager), console=out, auto_refresh=False) as live:
            while count is None or refreshes < count:
                time.sleep(interval)
                live.update(_stats_table(monitor, manager), refresh=True)
                refreshes += 1
    except KeyboardInterrupt:
        pass


PLOT_HINT = ("--plot needs matplotlib, which this Python lacks: pip install matplotlib (it comes with "
             "ragged's dev and plot extras).")


@gpu.command(short_help="Compare fixed batch sizes with adaptive sizing.")
@click.option("--model", default="tiny-colpali", help="Model to measure (hub id, folder or preset).")
@click.option("--device", default="auto", help=f"{device_choices()}.")
@click.option("--pages", type=click.IntRange(min=1), default=32, help="Synthetic pages per run.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, help="Largest fixed batch to try.")
@click.option("--rounds", type=click.IntRange(min=1), default=5,
              help="Interleaved rounds after the warm-up; each configuration runs once a round.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Save a PNG chart (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def benchmark(model: str, device: str, pages: int, max_batch: int, rounds: int, plot: Path | None,
              as_json: bool) -> None:
    """Compare fixed batch sizes and adaptive sizing: pages/s (median and spread
    of interleaved rounds, warm-up excluded), peak memory, adaptive's sizes."""
    from ragged.cli.sweep import run_sweep
    from ragged.gpu import default_device_manager

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail(PLOT_HINT)
    manager = default_device_manager()
    target = manager.get_optimal_device(device)
    status = None if as_json else lambda text: out.print(f"[dim]{safe(text)}[/]")
    sweep = run_sweep(model, target, pages, max_batch, manager=manager, rounds=rounds, progress=status)
    if as_json:
        out.print_json(json.dumps({"model": model, "device": target.label, "pages": pages, "rounds": rounds,
                                   "rows": [r.as_dict() for r in sweep.rows],
                                   "level_with_best": {r.label: sweep.level_with_best(r.label) for r in sweep.rows},
                                   "sizing": None if sweep.sizing is None else sweep.sizing.as_dict()}))
    else:
        _print_sweep(sweep, f"{model} on {target}, {pages} pages of 612x792, median of {rounds} interleaved rounds")
    if plot is not None:
        from ragged.cli.sweep import plot_sweep

        plot_sweep(sweep, plot, f"{model} on {target.label}, {pages} pages, {rounds} rounds")
        (err if as_json else out).print(f"chart written to {safe(plot)}")  # JSON output stays parseable


def _print_sweep(sweep: Sweep, title: str) -> None:
    from rich.table import Table

    from ragged.cli.sweep import size_runs

    best = sweep.best_fixed
    table = Table(title=plain(title))
    for column in ("configuration", "pages/s", "range", "vs best fixed", "peak memory", "OOMs"):
        table.add_column(column)
    for r in sweep.rows:
        low, high = r.spread
        paired = sweep.ratio(r.label) if best is not None else None  # the median of per-round ratios
        ratio = f"{paired:.2f}" if paired is not None else "-"
        if paired is not None and r is not best and sweep.level_with_best(r.label):
            ratio += ", level"
        table.add_row(r.label, f"{r.pages_per_second:.2f}", f"{low:.2f}-{high:.2f}", ratio, gib(r.peak_bytes),
                      str(r.ooms))
    out.print(table)
    if any(sweep.level_with_best(r.label) for r in sweep.rows if r is not best):
        out.print("level: the rounds do not show it slower than the best fixed batch (it won too many of them "
                  "for a sign test to call it slower at 5%)")
    for r in sweep.rows:
        if r.batch is None:
            rounds = " | ".join(size_runs(s) for s in r.sizes)
            out.print(f"{r.label}: batch sizes, warm-up: {size_runs(r.warmup_sizes)}; rounds: {rounds}")
    if sweep.sizing is not None:
        out.print(f"adaptive learnt: {safe(sweep.sizing.describe())}")


__all__ = ["DeviceRow", "gpu"]
