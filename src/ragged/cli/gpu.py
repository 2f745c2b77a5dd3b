"""``ragged gpu``: what the devices are, how full they are, what batch fits."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import click
from rich.live import Live
from rich.table import Table

from ragged.cli.output import fail, gib, out
from ragged.gpu import DeviceInfo, MemoryLevel, MemoryMonitor, default_device_manager

_LEVEL_STYLE = {MemoryLevel.NORMAL: "green", MemoryLevel.WARNING: "yellow", MemoryLevel.CRITICAL: "bold red"}


@dataclass(frozen=True)
class DeviceRow:
    """One line of ``ragged gpu list`` (bytes)."""

    device: str
    name: str
    total_bytes: int
    free_bytes: int
    compute_capability: str | None
    auto: bool


@click.group()
def gpu() -> None:
    """Devices, memory and batch sizes."""


@gpu.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def list_devices(as_json: bool) -> None:
    """Every device, its memory, and which one auto-selection picks."""
    manager = default_device_manager()
    chosen = manager.get_optimal_device()
    rows = []
    for device in manager.devices:
        mem = manager.get_device_memory_info(device)
        compute = ".".join(map(str, device.compute_capability)) if device.compute_capability else None
        rows.append(DeviceRow(device.label, device.name, mem.total, mem.free, compute, device.same_device(chosen)))
    if as_json:
        out.print_json(json.dumps([asdict(r) for r in rows]))
        return
    table = Table(title=f"Devices (detected in {manager.detection_seconds * 1e3:.1f} ms)")
    for column in ("device", "name", "total", "free", "compute", "auto"):
        table.add_column(column)
    for row in rows:
        table.add_row(row.device, row.name, gib(row.total_bytes), gib(row.free_bytes), row.compute_capability or "-",
                      "[bold green]<- auto[/]" if row.auto else "")
    out.print(table)


@gpu.command()
@click.argument("device", default="auto")
def info(device: str) -> None:
    """Details of DEVICE (auto, cpu, mps, cuda or cuda:N)."""
    from ragged.embeddings.loading import default_dtype

    manager = default_device_manager()
    chosen = manager.get_optimal_device(device)
    mem = manager.get_device_memory_info(chosen)
    bf16 = manager.supports_bf16(chosen)
    table = Table(show_header=False, box=None)
    table.add_column(style="bold")
    table.add_column()
    for key, value in (
        ("device", chosen.label), ("name", chosen.name), ("total", gib(mem.total)), ("free", gib(mem.free)),
        ("used by all processes", f"{gib(mem.used)} ({mem.utilisation_pct:.1f}%)"),
        ("allocated by ragged", gib(mem.allocated)), ("reserved by ragged", gib(mem.reserved)),
        ("compute capability", ".".join(map(str, chosen.compute_capability)) if chosen.compute_capability else "-"),
        ("bf16", "yes" if bf16 else "no"),
        ("embedding dtype", str(default_dtype(chosen, bf16)).removeprefix("torch.")),
    ):
        table.add_row(key, value)
    out.print(table)


def _stats_table(monitor: MemoryMonitor) -> Table:
    snap = monitor.take_snapshot()
    level = monitor.classify(snap.utilisation_pct)
    table = Table(title=f"{monitor.device} memory (warning {monitor.warning_threshold_pct:.0f}%, "
                        f"critical {monitor.critical_threshold_pct:.0f}%)")
    for column in ("total", "used", "free", "allocated", "reserved", "utilisation", "level"):
        table.add_column(column)
    style = _LEVEL_STYLE[level]
    table.add_row(gib(snap.total), gib(snap.used), gib(snap.free), gib(snap.allocated), gib(snap.reserved),
                  f"[{style}]{snap.utilisation_pct:.1f}%[/]", f"[{style}]{level.value}[/]")
    return table


@gpu.command()
@click.option("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N.")
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option("--interval", type=click.FloatRange(min=0.1), default=1.0, help="Seconds between refreshes.")
@click.option("--warning", type=click.FloatRange(1, 100), default=85.0, help="Warning level, % used.")
@click.option("--critical", type=click.FloatRange(1, 100), default=95.0, help="Critical level, % used.")
def stats(device: str, watch: bool, interval: float, warning: float, critical: float) -> None:
    """Memory readings of a device, with warning and critical levels marked."""
    manager = default_device_manager()
    monitor = MemoryMonitor(manager.get_optimal_device(device), manager, warning_threshold_pct=warning,
                            critical_threshold_pct=critical)
    if not watch:
        out.print(_stats_table(monitor))
        return
    try:
        with Live(_stats_table(monitor), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(_stats_table(monitor), refresh=True)
    except KeyboardInterrupt:
        pass


@gpu.command()
@click.option("--model", default="tiny-colpali", help="Model to measure (hub id, folder or preset).")
@click.option("--device", default="auto", help="auto, cpu, mps, cuda or cuda:N.")
@click.option("--pages", type=click.IntRange(min=1), default=32, help="Synthetic pages per run.")
@click.option("--max-batch", type=click.IntRange(min=1), default=32, help="Largest fixed batch to try.")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="Save a PNG chart (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def benchmark(model: str, device: str, pages: int, max_batch: int, plot: Path | None, as_json: bool) -> None:
    """Sweep batch sizes: pages/s and peak memory for each, and what adaptive picks."""
    from ragged.cli.sweep import plot_sweep, run_sweep

    if plot is not None:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            fail("--plot needs matplotlib: pip install 'ragged[plot]'.")
    manager = default_device_manager()
    target: DeviceInfo = manager.get_optimal_device(device)
    rows = run_sweep(model, target, pages, max_batch, manager=manager)
    if as_json:
        out.print_json(json.dumps([r.__dict__ for r in rows]))
    else:
        table = Table(title=f"{model} on {target}, {pages} pages of 612x792")
        for column in ("batch", "pages/s", "peak memory", "OOMs"):
            table.add_column(column)
        for r in rows:
            table.add_row(r.label, f"{r.pages_per_second:.2f}", gib(r.peak_bytes), str(r.ooms))
        out.print(table)
    if plot is not None:
        plot_sweep(rows, plot, f"{model} on {target.label}")
        out.print(f"chart written to {plot}")


__all__ = ["DeviceRow", "gpu"]
