"""Terminal output helpers: consoles, sizes, one-line errors, safe text.

Every value that comes from outside (file names, queries, index paths,
error messages quoting them) goes through :func:`safe` before it reaches
the terminal: Rich markup in it is escaped and control characters are
shown as escapes, so a file named ``[/]x.pdf`` or one holding a "clear
screen" sequence prints as what it is.
"""

from __future__ import annotations

import sys
import unicodedata

from rich.console import Console
from rich.markup import escape
from rich.text import Text

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)


def printable(text: object) -> str:
    """``text`` with control and format characters (ESC, BEL, bidi
    overrides, ...) shown as escapes such as ``\\x1b``; newlines and tabs too."""
    chars = []
    for ch in str(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Zl", "Zp"):
            code = ord(ch)
            chars.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            chars.append(ch)
    return "".join(chars)


def safe(text: object) -> str:
    """``text`` ready to embed in Rich markup: printable, markup escaped."""
    return escape(printable(text))


def plain(text: object) -> Text:
    """``text`` as a Rich Text cell: printable, never parsed as markup."""
    return Text(printable(text))


def shorten_left(text: str, width: int) -> str:
    """``text`` in at most ``width`` characters, cut from the left (a path
    keeps its file name): ``.../examples/annual-report.pdf``."""
    if len(text) <= width:
        return text
    return "..." + text[len(text) - max(1, width - 3):]


def gib(n: int | None) -> str:
    """Bytes as GiB (or MiB when small); ``-`` when unknown."""
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
    """One ``error:`` line on stderr; the message is printed as it is."""
    err.print(f"[bold red]error:[/] {safe(message)}", soft_wrap=True)

