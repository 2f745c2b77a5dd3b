"""Keep transformers quiet while ragged calls it, and leave its settings as found.

ragged reports progress itself, so its own calls into transformers run with
the progress bars off and logging at errors only; the caller's settings
(a notebook's, an application's) come back when the block ends. The
command line, which owns its process, turns them off for good
(:func:`silence_transformers`).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

_LOCK = threading.RLock()  # the settings are process-wide: one block changes them at a time


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Progress bars off and errors-only logging for the block, then restored."""
    from transformers.utils import logging as hf_logging

    with _LOCK:
        verbosity = hf_logging.get_verbosity()
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
        try:
            yield
        finally:
            hf_logging.set_verbosity(verbosity)
            if bars:
                hf_logging.enable_progress_bar()


def silence_transformers() -> None:
    """Turn transformers' progress bars and info logging off for the whole
    process (for a front end that owns it, such as the command line)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
