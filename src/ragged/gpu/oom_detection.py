"""Is this exception an out-of-memory error? Small named predicates.

Each predicate matches by type or by the exact message family it names, and
:func:`is_oom_error` walks ``__cause__``/``__context__`` so that an OOM
wrapped by another library is still seen. A shape error is not an OOM.
A registered backend (:mod:`ragged.gpu.registry`) may add its own kind's
predicate.
"""

from __future__ import annotations

import torch

from ragged.errors import OutOfMemoryRecoveryError
from ragged.gpu.registry import oom_predicates

# torch.OutOfMemoryError (alias torch.cuda.OutOfMemoryError) is raised by the
# CUDA caching allocator: "CUDA out of memory. Tried to allocate 2.00 GiB ...".
_TORCH_OOM_TYPES: tuple[type[BaseException], ...] = (torch.OutOfMemoryError,)


def is_torch_oom_type(exc: BaseException) -> bool:
    """torch's own OOM class (CUDA caching allocator, and XPU in recent torch)."""
    return isinstance(exc, _TORCH_OOM_TYPES)


def is_gpu_allocator_oom(exc: BaseException) -> bool:
    """Allocator messages of CUDA, ROCm (HIP) and Intel XPU.

    Matches "CUDA out of memory. Tried to allocate ...", "HIP out of memory.
    Tried to allocate ..." and "XPU out of memory. Tried to allocate ..."
    from c10's caching allocators.
    """
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        f"{kind} out of memory" in text for kind in ("CUDA", "HIP", "XPU")
    )


def is_driver_oom(exc: BaseException) -> bool:
    """Driver-level failures: "CUDA error: out of memory" (cudaErrorMemoryAllocation,
    e.g. at context creation) and the HIP equivalent; also cuBLAS's
    "CUBLAS_STATUS_ALLOC_FAILED" when it cannot get its workspace."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDA error: out of memory" in text
        or "HIP error: out of memory" in text
        or "CUBLAS_STATUS_ALLOC_FAILED" in text
    )


def is_mps_oom(exc: BaseException) -> bool:
    """Apple's MPS allocator: "MPS backend out of memory (MPS allocated: ...,
    other allocations: ..., max allowed: ...)" (a plain RuntimeError)."""
    return isinstance(exc, RuntimeError) and "MPS backend out of memory" in str(exc)


def is_cpu_oom(exc: BaseException) -> bool:
    """The CPU allocator: c10's "DefaultCPUAllocator: can't allocate memory: you
    tried to allocate N bytes" (and "not enough memory" on Windows), or
    Python's own :class:`MemoryError`."""
    if isinstance(exc, MemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "DefaultCPUAllocator: can't allocate memory" in text
        or "DefaultCPUAllocator: not enough memory" in text
    )


def is_cudnn_workspace_oom(exc: BaseException) -> bool:
    """cuDNN failing for want of workspace: "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED.
    This error may appear if you passed in a non-contiguous input." (the case
    Lightning calls a snafu) and "CUDNN_STATUS_ALLOC_FAILED"."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "CUDNN_STATUS_ALLOC_FAILED" in text
        or ("CUDNN_STATUS_NOT_SUPPORTED" in text and "non-contiguous input" in text)
    )


def is_unrecovered_oom(exc: BaseException) -> bool:
    """ragged's own give-up after an OOM: to an enclosing unit of work (a batch
    of requests around a batch of queries) it is an OOM it may still recover
    from by doing less at once."""
    return isinstance(exc, OutOfMemoryRecoveryError)


_PREDICATES = (
    is_unrecovered_oom,
    is_torch_oom_type,
    is_gpu_allocator_oom,
    is_driver_oom,
    is_mps_oom,
    is_cpu_oom,
    is_cudnn_workspace_oom,
)


def is_oom_error(exc: BaseException | None) -> bool:
    """True when ``exc``, or an exception it was raised from, is an OOM."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if any(predicate(exc) for predicate in _PREDICATES) or _registered(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def _registered(exc: BaseException) -> bool:
    """A registered backend's own predicate matches (one that fails is no match)."""
    for predicate in oom_predicates():
        try:
            if predicate(exc):
                return True
        except Exception:  # a third-party predicate must not turn an error into another
            continue
    return False


def clear_tracebacks(exc: BaseException | None) -> None:
    """Drop the tracebacks along ``exc``'s chain, freeing the frames (and the
    tensors of the failed attempt) they hold, while keeping type and message."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc.__traceback__ = None
        exc = exc.__cause__ or exc.__context__
