"""The specification's module for OOM recovery (``src/gpu/oom_handler.py``).

The engine lives in :mod:`ragged.gpu.recovery` and the spec's decorator in
:mod:`ragged.gpu.compat`; this module keeps the spec's import path for
``OOMHandler``, ``is_oom_error`` and ``with_oom_handling``. Nothing inside
ragged imports it.
"""

from __future__ import annotations

from ragged.gpu.compat.decorator import with_oom_handling
from ragged.gpu.oom_detection import is_oom_error
from ragged.gpu.recovery import OOMHandler, OOMStats, Recovery, RecoveryOptions, RecoveryStep, RecoveryStrategy

__all__ = ["OOMHandler", "OOMStats", "Recovery", "RecoveryOptions", "RecoveryStep", "RecoveryStrategy",
           "is_oom_error", "with_oom_handling"]
