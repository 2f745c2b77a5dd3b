"""The ``ragged`` command.

:func:`main` is the console entry point: it makes Ctrl-C quiet from the
very first moment (before the heavier imports run), then hands over to
:mod:`ragged.cli.main`.

Ctrl-C during an import is held back until the import is done. Native
modules (torch first) run Python code while they initialise; an exception
raised there cannot pass back through their C++ frames, and the process
aborts ("terminate called after throwing an instance of
'pybind11::error_already_set'") instead of stopping quietly.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from types import FrameType

RETRY_S = 0.05  # how soon a held-back Ctrl-C looks again whether the import is done


def importing(frame: FrameType | None) -> bool:
    """Whether ``frame`` runs inside an import (any frame of importlib's machinery)."""
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib._bootstrap"):
            return True
        frame = frame.f_back
    return False


def _interrupt(signum: int, frame: FrameType | None) -> None:
    """Ctrl-C as a KeyboardInterrupt, held back while an import runs."""
    if importing(frame) and not sys.is_finalizing():
        again = threading.Timer(RETRY_S, os.kill, (os.getpid(), signal.SIGINT))  # back here once the import is done
        again.daemon = True  # a process that ends meanwhile ends as it would have
        again.start()
        return
    raise KeyboardInterrupt


def _quiet_interrupt(signum: int, frame: FrameType | None) -> None:
    sys.stderr.write("interrupted.\n")
    raise SystemExit(130)


def install_interrupt_handler() -> None:
    """Route Ctrl-C through :func:`_interrupt` (main thread only)."""
    signal.signal(signal.SIGINT, _interrupt)


def main() -> None:
    """Console entry point."""
    signal.signal(signal.SIGINT, _quiet_interrupt)
    from ragged.cli.main import run

    install_interrupt_handler()
    run()
