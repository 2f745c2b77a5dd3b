"""The host's C heap (glibc malloc): keep what one batch frees for the next.

Measured on the 2-core development machine (docs/benchmarks.md, "The host
heap"): with glibc's defaults, embedding tiny-colmodernvbert in batches of 2
and 8 spent 27% of its CPU time in the kernel, faulting in memory that the
batch before had just handed back. glibc raises its mmap and trim thresholds only
up to the largest block freed so far, and returns the free top of the heap
whenever it passes the trim threshold; so a batch of 8 right after a batch of 2
ran 22% slower than one after another 8. That made a size
look slower *because it was tried*, and tilted every probe of the sizer
towards the smaller size.

:func:`keep_freed_memory` makes the heap behave like a GPU caching allocator
instead: large blocks (up to ``MMAP_THRESHOLD``) come from the heap and go
back to it, and up to a sixteenth of RAM of free heap (at most
``KEEP_MAX``) stays with the process. :func:`trim` hands it all back,
which the CPU backend does when a model is released, after an out-of-memory
error, and before it opens a peak-memory window. Memory the heap keeps is
resident, so it counts as used in every memory reading: the budgets err on
the safe side by at most that much.

Only glibc has these knobs; elsewhere (macOS, musl) nothing changes.
``RAGGED_HOST_HEAP=system`` leaves glibc's defaults alone.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
from typing import Any

from loguru import logger

ENV = "RAGGED_HOST_HEAP"  # "system": leave malloc's defaults alone
M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc's malloc.h)
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 1024**2  # the ceiling of glibc's own sliding threshold on 64-bit
TOP_PAD = 64 * 1024**2  # grow the heap in steps of this much (address space; pages fault in when used)
KEEP_SHARE = 16  # keep up to 1/16 of RAM of free heap
KEEP_MAX = 1024**3  # (mallopt takes a C int)


_libc: Any = None  # None: not looked for yet; False: not glibc
_kept: int | None = None  # bytes of free heap kept, once set


def _glibc() -> Any:
    """The C library when it is glibc, else None."""
    global _libc
    if _libc is None:
        if platform.libc_ver()[0] != "glibc":
            _libc = False
        else:
            try:
                _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
                _libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]  # values past 2**31 would wrap silently
                _libc.malloc_trim.argtypes = [ctypes.c_size_t]
            except (OSError, AttributeError):
                _libc = False
    return _libc or None


def keep_freed_memory(total_bytes: int) -> int | None:
    """Tune glibc's heap for batches (see the module docstring); once per
    process. Returns the bytes of free heap kept, or None where nothing was
    set (not glibc, ``RAGGED_HOST_HEAP=system``, or malloc refused)."""
    global _kept
    if _kept is not None:
        return _kept
    if os.environ.get(ENV, "").strip().lower() == "system":
        return None
    libc = _glibc()
    if libc is None:
        return None
    keep = max(MMAP_THRESHOLD, min(KEEP_MAX, total_bytes // KEEP_SHARE))
    done = [libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD), libc.mallopt(M_TRIM_THRESHOLD, keep),
            libc.mallopt(M_TOP_PAD, TOP_PAD)]
    if not all(done):
        logger.debug("host heap: malloc refused some settings ({}); left as it is", done)
        return None
    _kept = keep
    logger.debug("host heap: keeps up to {:,} MiB of freed memory for the next batch", keep // 1024**2)
    return keep


def can_trim() -> bool:
    """True where :func:`trim` hands memory back (glibc)."""
    return _glibc() is not None


def trim() -> None:
    """Hand every free page of the heap back to the system (glibc's
    ``malloc_trim``; about a millisecond); nothing elsewhere."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
