"""OOM recognition by type, message and chained cause."""

from __future__ import annotations

import pytest
import torch

from ragged.gpu import is_oom_error
from ragged.gpu.oom_detection import clear_tracebacks

OOMS = [
    torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB."),
    torch.cuda.OutOfMemoryError("anything the allocator says"),
    RuntimeError("CUDA out of memory. Tried to allocate 20.00 MiB (GPU 0; 7.79 GiB total capacity)"),
    RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be asynchronously reported"),
    RuntimeError("HIP out of memory. Tried to allocate 1.00 GiB"),
    RuntimeError("HIP error: out of memory"),
    RuntimeError("XPU out of memory. Tried to allocate 512.00 MiB"),
    RuntimeError(
        "MPS backend out of memory (MPS allocated: 17.07 GB, other allocations: 1.55 GB, max allowed: "
        "18.13 GB). Tried to allocate 256.00 MB on private pool."
    ),
    RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried"),
    RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1024 bytes."),
    RuntimeError(
        "cuDNN error: CUDNN_STATUS_NOT_SUPPORTED. This error may appear if you passed in a non-contiguous input."
    ),
    RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
    RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"),
    MemoryError(),
]

NOT_OOMS = [
    RuntimeError("mat1 and mat2 shapes cannot be multiplied (4x3 and 4x3)"),
    RuntimeError("Expected all tensors to be on the same device"),
    RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"),  # without the workspace hint
    ValueError("out of memory"),  # not an allocator error type
    KeyError("CUDA out of memory"),
    None,
]


@pytest.mark.parametrize("exc", OOMS, ids=lambda e: type(e).__name__ + ":" + str(e)[:30])
def test_recognised(exc: BaseException) -> None:
    assert is_oom_error(exc)


@pytest.mark.parametrize("exc", NOT_OOMS, ids=lambda e: repr(e)[:40])
def test_not_recognised(exc: BaseException | None) -> None:
    assert not is_oom_error(exc)


def test_real_cpu_allocator_oom() -> None:
    with pytest.raises(RuntimeError) as info:
        torch.empty(2**62, dtype=torch.uint8)
    assert is_oom_error(info.value)


def test_wrapped_by_cause_and_by_context() -> None:
    inner = torch.OutOfMemoryError("CUDA out of memory.")
    by_cause = ValueError("model failed")
    by_cause.__cause__ = inner
    assert is_oom_error(by_cause)
    try:
        try:
            raise RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)")
        except RuntimeError:
            raise KeyError("while handling") from None
    except KeyError as exc:
        # `from None` suppresses display but keeps __context__
        assert is_oom_error(exc)


def test_cyclic_chain_terminates() -> None:
    a, b = ValueError("a"), ValueError("b")
    a.__context__, b.__context__ = b, a
    assert not is_oom_error(a)


def test_clear_tracebacks_keeps_message() -> None:
    try:
        raise torch.OutOfMemoryError("CUDA out of memory.")
    except torch.OutOfMemoryError as exc:
        caught = exc
    assert caught.__traceback__ is not None
    clear_tracebacks(caught)
    assert caught.__traceback__ is None and is_oom_error(caught)
