"""The human-readable resource report after ``ragged ingest``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ragged.cli.output import gib
from ragged.ingest.report import IngestReport


def print_ingest_report(console: Console, report: IngestReport) -> None:
    """Pages added and skipped, then device, batches, memory, OOMs and speed."""
    failed = len(report.problems)
    console.print(
        f"[bold]{report.documents_added} document(s), {report.pages_added} page(s) added[/] to {report.index}; "
        f"{report.documents_skipped} unchanged skipped; {failed} failed.",
        soft_wrap=True,
    )
    if not report.batch_sizes:
        return
    sizes = sorted(set(report.batch_sizes))
    size_text = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    peak = f"{gib(report.peak_bytes)} per batch, above the model"
    if report.budget_bytes:
        peak += f", of a {gib(report.budget_bytes)} budget ({100 * report.peak_bytes / report.budget_bytes:.0f}%)"
    if report.ooms:
        ooms = f"{report.ooms} recovered (" + ", ".join(f"{k} {v}" for k, v in report.recoveries.items() if v) + ")"
        if report.cpu_fallback_pages:
            ooms += f"; {report.cpu_fallback_pages} page(s) ran on the CPU"
    else:
        ooms = "none"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", report.model)
    table.add_row("device", f"{report.device} ({gib(report.device_total_bytes)}), {report.dtype}")
    table.add_row("batches", f"{len(report.batch_sizes)}, sizes {size_text}")
    table.add_row("peak memory", peak)
    table.add_row("out of memory", ooms)
    table.add_row("speed", f"{report.pages_per_second:.1f} pages/s ({report.seconds:.1f} s in all)")
    console.print(table)
