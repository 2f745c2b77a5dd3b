"""The ``ragged`` command.

:func:`main` is the console entry point: it makes Ctrl-C quiet from the
very first moment (before the heavier imports run), holds it back while
torch imports (:mod:`ragged.cli.interrupts`), then hands over to
:mod:`ragged.cli.main`.
"""

from __future__ import annotations

import signal
import sys
from types import FrameType

from ragged.cli.interrupts import hold_interrupts_during_import


def _quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted.\n")
    raise SystemExit(130)


def main() -> None:
    """Console entry point."""
    previous = signal.signal(signal.SIGINT, _quiet_interrupt)
    hold_interrupts_during_import()
    from ragged.cli.main import run

    signal.signal(signal.SIGINT, previous)
    run()
