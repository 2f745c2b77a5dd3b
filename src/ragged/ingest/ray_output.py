"""Keep Ray's own printing out of ragged's output.

Ray's driver prints the error lines its raylet publishes ("A worker died or
was killed ...") on stdout, with colour codes, from a thread of its own,
whatever ``log_to_driver`` says; and it warns on stderr, through the
``ray`` logger, when it starts a cluster. ragged reports a lost worker
itself (a warning, and the pages sent again), so both go to ragged's debug
log instead (shown with ``ragged -v``), free of colour codes.
"""

from __future__ import annotations

import logging
import re
from typing import Any

from loguru import logger

_COLOUR = re.compile(r"\x1b\[[0-9;]*m")


def _to_debug_log(data: dict[str, Any], ignore_prefix: bool = False) -> None:
    """Stands in for Ray's ``print_to_stdstream``: each line to the debug log."""
    for line in data.get("lines", []):
        logger.debug("Ray ({}): {}", data.get("pid", "?"), _COLOUR.sub("", str(line)))


def quiet_ray(ray: Any) -> None:
    """Route Ray's driver-side printing to the debug log (a Ray without the
    hook is left as it is)."""
    logging.getLogger("ray").setLevel(logging.ERROR)
    worker = getattr(getattr(ray, "_private", None), "worker", None)
    if worker is not None and hasattr(worker, "print_to_stdstream"):
        worker.print_to_stdstream = _to_debug_log
