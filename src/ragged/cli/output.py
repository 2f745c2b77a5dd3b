"""Terminal output helpers: consoles, sizes, one-line errors."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.markup import escape

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def gib(n: int | None) -> str:
    """Bytes as GiB (or MiB when small)."""
    if n is None:
        return "-"
    if abs(n) < 1024**3:
        return f"{n / 1024**2:.0f} MiB"
    return f"{n / 1024**3:.1f} GiB"


def fail(message: str, code: int = 1) -> None:
    """Print a one-line error and exit with ``code``."""
    print_error(message)
    sys.exit(code)


def print_error(message: str) -> None:
    """One ``error:`` line on stderr; the message is printed verbatim."""
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
