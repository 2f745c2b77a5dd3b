"""The specification's API that the engine itself does not need, in one place.

ragged's resource manager works through :class:`~ragged.gpu.runtime.Runtime`,
the batch runner and the sizer's ``memory_limit``/``next_batch_size``. The
v0.5.1 specification also names calls that production never makes; they are
kept, documented and tested, as thin layers over the same engine:

==============================================  ===========================================
spec call                                       over
==============================================  ===========================================
``AdaptiveBatchSizer.calculate_batch_size``     the sizer's memory limit (one policy, fit)
``AdaptiveBatchSizer.adjust_batch_size``        the monitor's reading, capped by the limit
``MemoryMonitor.get_recommended_batch_size``    the policy's levels and target
``MemoryMonitor.add_warning_callback`` (and     the monitor's level changes
``add_critical_callback``, ``on_warning=``)
``memory_budget``                               :meth:`MemoryPolicy.batch_budget`
``@with_oom_handling``                          :meth:`OOMHandler.run` of a runtime
``ColPaliEmbedder.embed_batch``                 ``embed_images``
==============================================  ===========================================
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragged.gpu.compat.decorator import with_oom_handling
    from ragged.gpu.compat.methods import SpecEmbedding, SpecMonitoring, SpecSizing, memory_budget

_WHERE = {
    "SpecEmbedding": "methods",
    "SpecMonitoring": "methods",
    "SpecSizing": "methods",
    "memory_budget": "methods",
    "with_oom_handling": "decorator",
}

__all__ = [
    "SpecEmbedding",
    "SpecMonitoring",
    "SpecSizing",
    "memory_budget",
    "with_oom_handling",
]


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'ragged.gpu.compat' has no attribute {name!r}")
    return getattr(importlib.import_module(f"ragged.gpu.compat.{_WHERE[name]}"), name)
