"""The human-readable resource report after ``ragged ingest``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ragged.cli.output import gib, plain, safe
from ragged.ingest.report import IngestReport


def _summary(report: IngestReport) -> str:
    parts = [f"[bold]{report.documents_added} document(s), {report.pages_added} page(s) added[/]"]
    for count, what in ((report.documents_replaced, "replaced (file changed)"),
                        (report.documents_moved, "moved"), (report.documents_removed, "removed"),
                        (report.duplicates, "duplicate(s) skipped")):
        if count:
            parts.append(f"{count} {what}")
    parts.append(f"{report.documents_skipped} unchanged skipped")
    parts.append(f"{len(report.problems)} failed")
    return f"{', '.join(parts[:1])} to {safe(report.index)}; " + "; ".join(parts[1:]) + "."


def _memory(report: IngestReport) -> str:
    if report.peak_bytes is None:
        peak = "not measurable on this device"
    else:
        peak = f"{gib(report.peak_bytes)} per batch, above the model ({gib(report.model_bytes)})"
    if report.budget_bytes is None:
        return peak + "; budget unknown (the device could not be read)"
    if report.budget_bytes == 0:
        return peak + "; [yellow]budget 0[/]: the device was already at the memory line"
    used = f" ({100 * report.peak_bytes / report.budget_bytes:.0f}%)" if report.peak_bytes else ""
    return f"{peak}, of a {gib(report.budget_bytes)} budget{used}"


def _speed(report: IngestReport) -> str:
    """Pages a second over the whole run, then where the time went: the
    images, the text, and the rest (reading, rendering, committing)."""
    parts = [f"{report.seconds:.1f} s in all"]
    if report.embed_seconds:
        images = f"images {report.embed_seconds:.1f} s ({_rate(report.pages_per_second)} pages/s"
        if not report.workers:
            images += (f"; waiting for preprocessing {100 * report.prepare_seconds / report.embed_seconds:.0f}%, "
                       f"in the model {100 * report.compute_seconds / report.embed_seconds:.0f}%")
        parts.append(images + ")")
    if report.text_seconds:
        parts.append(f"text {report.text_seconds:.1f} s")
    rest = report.seconds - report.embed_seconds - report.text_seconds
    if not report.workers and (report.embed_seconds or report.text_seconds) and rest > 0:
        parts.append(f"the rest {rest:.1f} s")
    return f"{_rate(report.overall_pages_per_second)} pages/s ({'; '.join(parts)})"


def _rate(value: float) -> str:
    """A rate with two significant digits below 10 (0.0083, 1.2), whole above."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def print_ingest_report(console: Console, report: IngestReport) -> None:
    """Pages added and skipped, then device, batches, memory, OOMs and speed."""
    console.print(_summary(report), soft_wrap=True)
    for note in report.notes:
        console.print(f"  {safe(note)}", soft_wrap=True)
    if not report.batch_sizes:
        return
    sizes = sorted(set(report.batch_sizes))
    size_text = str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"
    if report.ooms:
        ooms = f"{report.ooms} recovered (" + ", ".join(f"{k} {v}" for k, v in report.recoveries.items() if v) + ")"
        if report.cpu_fallback_pages:
            ooms += f"; {report.cpu_fallback_pages} page(s) ran on the CPU"
        if report.failed_pages:
            ooms += f"; {report.failed_pages} page(s) could not be embedded"
    else:
        ooms = "none"
    device = (safe(report.device) if report.workers
              else f"{report.device} ({gib(report.device_total_bytes)}), {report.dtype}")
    if report.placement_note:
        device += f" [yellow]instead of the requested device[/]: {safe(report.placement_note)}"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", plain(report.model))
    table.add_row("device", device)
    table.add_row("batches", f"{len(report.batch_sizes)}, sizes {size_text}")
    table.add_row("memory", _memory(report) if not report.workers
                  else f"{gib(report.peak_bytes)} per batch at most, above the model (each worker: below)")
    if report.budget_warning:
        table.add_row("", f"[yellow]{safe(report.budget_warning)}[/]")
    table.add_row("out of memory", ooms)
    table.add_row("speed", _speed(report))
    if report.text_model:
        text = f"{safe(report.text_model)}: {report.passages} passage(s) in {report.text_seconds:.1f} s"
        if report.documents_text_added:
            text += f"; {report.documents_text_added} older document(s) given their text"
        table.add_row("text", text)
    if report.pages_without_text:
        table.add_row("", f"{report.pages_without_text} page(s) have no text layer (searchable by image only)")
    console.print(table)
    if report.workers:
        workers = Table(title="workers", show_edge=False)
        for column in ("worker", "device", "pages", "pages/s", "batch sizes", "peak memory", "out of memory"):
            workers.add_column(column)
        for w in report.workers:
            sizes = sorted(set(w.batch_sizes))
            workers.add_row(w.worker, safe(w.device), str(w.pages), f"{w.pages_per_second:.1f}",
                            f"{sizes[0]}-{sizes[-1]}" if sizes else "-", gib(w.peak_bytes),
                            str(w.ooms) if w.ooms else "none")
        console.print(workers)
