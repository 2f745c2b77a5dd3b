"""The human-readable resource report after ``ragged ingest``."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from ragged.cli.output import gib, plain, safe
from ragged.embeddings.report import EmbeddingReport
from ragged.ingest.report import IngestReport


def _summary(report: IngestReport) -> str:
    parts = [f"[bold]{report.documents_added} document(s), {report.pages_added} page(s) added[/]"]
    for count, what in ((report.documents_replaced, "replaced (file changed)"),
                        (report.documents_moved, "moved"), (report.documents_removed, "removed"),
                        (report.duplicates, "duplicate(s) skipped")):
        if count:
            parts.append(f"{count} {what}")
    parts.append(f"{report.documents_skipped} unchanged skipped")
    if report.skipped:
        parts.append(f"{len(report.skipped)} other file(s) skipped")
    parts.append(f"{len(report.problems)} failed")
    return f"{', '.join(parts[:1])} to {safe(report.index)}; " + "; ".join(parts[1:]) + "."


def _memory(vision: EmbeddingReport) -> str:
    if vision.peak_bytes is None:
        peak = "not measurable on this device"
    else:
        peak = f"{gib(vision.peak_bytes)} per batch, above the model ({gib(vision.model_bytes)})"
    if vision.budget_bytes is None:
        return peak + "; budget unknown (the device could not be read)"
    if vision.budget_bytes == 0:
        return peak + "; [yellow]budget 0[/]: the device was already at the memory line"
    used = f" ({100 * vision.peak_bytes / vision.budget_bytes:.0f}%)" if vision.peak_bytes else ""
    return f"{peak}, of a {gib(vision.budget_bytes)} budget{used}"


def _ooms(stats: EmbeddingReport, what: str) -> str:
    if not stats.ooms:
        return "none"
    text = f"{stats.ooms} recovered (" + ", ".join(f"{k} {v}" for k, v in stats.recoveries.items() if v) + ")"
    if stats.cpu_fallback_items:
        text += f"; {stats.cpu_fallback_items} {what}(s) ran on the CPU"
    if stats.failed_items:
        text += f"; {stats.failed_items} {what}(s) could not be embedded"
    return text


def _sizes(batch_sizes: list[int]) -> str:
    sizes = sorted(set(batch_sizes))
    if not sizes:
        return "-"
    return str(sizes[0]) if len(sizes) == 1 else f"{sizes[0]}-{sizes[-1]}"


def _choices(stats: EmbeddingReport) -> str:
    """The sizes the sizer chose and why, ``8 (start), 16 (faster)``; of a long
    history the first and the last three."""
    assert stats.sizing is not None
    words = [f"{c.size} ({c.why.value})" for c in stats.sizing.chosen]
    return ", ".join(words if len(words) <= 4 else [words[0], "...", *words[-3:]])


def _speed(report: IngestReport) -> str:
    """Pages a second over the whole run, then where the time went: the
    images, the text, and the rest (reading, rendering, committing)."""
    vision, text = report.vision, report.text
    parts = [f"{report.seconds:.1f} s in all"]
    if vision.seconds:
        images = f"images {vision.seconds:.1f} s"
        if not report.workers:
            images += (f" (waiting for preprocessing {100 * vision.prepare_seconds / vision.seconds:.0f}%, "
                       f"in the model {100 * vision.compute_seconds / vision.seconds:.0f}%)")
        parts.append(images)
    if text.seconds:
        parts.append(f"text {text.seconds:.1f} s")
    rest = report.seconds - vision.seconds - text.seconds
    if not report.workers and (vision.seconds or text.seconds) and rest > 0:
        parts.append(f"the rest {rest:.1f} s")
    return f"{_rate(report.overall_pages_per_second)} pages/s ({'; '.join(parts)})"


def _rate(value: float) -> str:
    """A rate with two significant digits below 10 (0.0083, 1.2), whole above."""
    return f"{value:.0f}" if value >= 10 else f"{value:.2g}"


def print_ingest_report(console: Console, report: IngestReport, verbose: bool = False) -> None:
    """Pages added and skipped, then device, batches, memory, OOMs and speed
    (with ``verbose``, every skipped file by name)."""
    console.print(_summary(report), soft_wrap=True)
    for note in report.notes:
        console.print(f"  {safe(note)}", soft_wrap=True)
    if report.skipped and verbose:
        for skipped in report.skipped:
            console.print(f"  skipped {safe(skipped.message)}", soft_wrap=True)
    elif report.skipped:
        console.print("  (--verbose or --json names the skipped files)", soft_wrap=True)
    if report.documents_converted:
        console.print(f"  converted {report.documents_converted} file(s), {report.pages_converted} page(s) with "
                      f"LibreOffice in {report.convert_seconds:.1f} s ({report.convert_workers} at a time, "
                      f"{gib(report.convert_peak_bytes)} at most)", soft_wrap=True)
    vision, text = report.vision, report.text
    if not vision.batch_sizes:
        return
    device = (safe(report.device) if report.workers
              else f"{safe(vision.device)} ({gib(vision.device_total_bytes)}), {vision.dtype}")
    if vision.placement_note:
        device += f" [yellow]instead of the requested device[/]: {safe(vision.placement_note)}"
    table = Table(show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("model", plain(report.model))
    table.add_row("device", device)
    table.add_row("batches", f"{len(vision.batch_sizes)}, sizes {_sizes(vision.batch_sizes)}"
                  + (f"; chosen {_choices(vision)}" if vision.sizing is not None and vision.sizing.chosen else ""))
    table.add_row("memory", _memory(vision) if not report.workers
                  else f"{gib(vision.peak_bytes)} per batch at most, above the model (each worker: below)")
    if vision.budget_warning:
        table.add_row("", f"[yellow]{safe(vision.budget_warning)}[/]")
    table.add_row("out of memory", _ooms(vision, "page"))
    table.add_row("speed", _speed(report))
    if report.text_model:
        line = f"{safe(report.text_model)}: {text.items} passage(s) in {text.seconds:.1f} s"
        if text.device and text.device != vision.device:
            line += f" on {safe(text.device)}"
        if report.documents_text_added:
            line += f"; {report.documents_text_added} older document(s) given their text"
        table.add_row("text", line)
        if text.placement_note:
            table.add_row("", f"[yellow]text model placed elsewhere[/]: {safe(text.placement_note)}")
        if text.ooms:
            table.add_row("", f"text model out of memory: {_ooms(text, 'passage')}")
    if report.pages_without_text:
        table.add_row("", f"{report.pages_without_text} page(s) have no text layer (searchable by image only)")
    console.print(table)
    if report.workers:
        workers = Table(title="workers", show_edge=False)
        for column in ("worker", "device", "pages", "pages/s", "batch sizes", "peak memory", "out of memory"):
            workers.add_column(column)
        for w in report.workers:
            workers.add_row(w.worker, safe(w.device), str(w.pages), f"{w.pages_per_second:.1f}",
                            _sizes(w.vision.batch_sizes), gib(w.vision.peak_bytes),
                            str(w.vision.ooms) if w.vision.ooms else "none")
        console.print(workers)
