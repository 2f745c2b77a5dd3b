"""A Rich progress bar over pages, with speed and the current batch size."""

from __future__ import annotations

import time
from types import TracebackType

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn

from ragged.ingest.pipeline import Progress as Callbacks


class IngestProgress:
    """Shows pages done, pages per second and the latest batch size."""

    def __init__(self, console: Console, enabled: bool = True) -> None:
        self._bar = Progress(
            TextColumn("[bold]embedding"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[speed]} pages/s, batch {task.fields[batch]}"), TimeRemainingColumn(),
            console=console, disable=not enabled or not console.is_terminal, transient=False,
        )
        self._task: TaskID | None = None
        self._start = 0.0
        self._done = 0

    def callbacks(self) -> Callbacks:
        """The callbacks the pipeline calls."""
        return Callbacks(start=self._on_start, advance=self._on_advance)

    def _on_start(self, total: int) -> None:
        self._start = time.perf_counter()
        self._task = self._bar.add_task("pages", total=total, speed="-", batch="-")

    def _on_advance(self, pages: int) -> None:
        if self._task is None:
            return
        self._done += pages
        elapsed = max(1e-9, time.perf_counter() - self._start)
        self._bar.update(self._task, advance=pages, speed=f"{self._done / elapsed:.1f}", batch=str(pages))

    def __enter__(self) -> IngestProgress:
        self._bar.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._bar.stop()
