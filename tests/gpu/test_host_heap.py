"""The host heap keeps what a batch frees for the next batch, and hands it back on request."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from ragged.gpu.backends import host_heap

GiB = 1024**3
MiB = 1024**2

# Three rounds of a "batch" (8 blocks of 16 MiB, written, then freed), a trim, one more round:
# the page faults of each round, counted by the kernel.
_ROUNDS = textwrap.dedent("""
    import json, resource, sys
    import numpy as np
    from ragged.gpu.backends import host_heap
    kept = host_heap.keep_freed_memory(16 * 1024**3) is not None
    def batch():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        blocks = [np.ones(2 * 1024**2) for _ in range(8)]
        del blocks
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    rounds = [batch() for _ in range(3)]
    host_heap.trim()
    print(json.dumps({"kept": kept, "rounds": rounds, "after_trim": batch()}))
""")


def _rounds(**env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _ROUNDS], capture_output=True, text=True, timeout=120, check=True,
                         env={**os.environ, "LOGURU_LEVEL": "WARNING", **env})
    result: dict[str, object] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not host_heap.can_trim(), reason="not glibc: malloc's heap cannot be tuned here")
def test_a_batch_reuses_what_the_one_before_freed_until_a_trim() -> None:
    kept = _rounds()
    system = _rounds(RAGGED_HOST_HEAP="system")
    assert kept["kept"] is True and system["kept"] is False
    first, *later = kept["rounds"]  # type: ignore[misc]
    assert first > 1000 and all(n < first // 20 for n in later)  # the later batches fault in (almost) nothing
    assert all(n > first // 2 for n in system["rounds"])  # glibc's defaults: every batch faults its memory in again
    assert kept["after_trim"] > first // 2  # the trim handed it back; the next batch faults it in


class FakeLibc:
    def __init__(self, accept: bool = True) -> None:
        self.accept = accept
        self.calls: list[tuple[int, int]] = []
        self.trims = 0

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append((param, value))
        return int(self.accept)

    def malloc_trim(self, pad: int) -> int:
        self.trims += 1
        return 1


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeLibc]:
    """The module as a process that has not tuned its heap yet, over a fake glibc."""
    libc = FakeLibc()
    monkeypatch.delenv(host_heap.ENV, raising=False)
    monkeypatch.setattr(host_heap, "_kept", None)
    monkeypatch.setattr(host_heap, "_libc", libc)
    yield libc


@pytest.mark.parametrize(("ram", "keep"), [(24 * GiB, 1 * GiB), (4 * GiB, 256 * MiB), (256 * MiB, 32 * MiB)])
def test_the_heap_keeps_a_share_of_ram_within_bounds(fresh: FakeLibc, ram: int, keep: int) -> None:
    assert host_heap.keep_freed_memory(ram) == keep
    assert dict(fresh.calls) == {host_heap.M_MMAP_THRESHOLD: 32 * MiB, host_heap.M_TRIM_THRESHOLD: keep,
                                 host_heap.M_TOP_PAD: host_heap.TOP_PAD}
    assert host_heap.keep_freed_memory(2 * ram) == keep and len(fresh.calls) == 3  # once a process


def test_system_leaves_malloc_alone(fresh: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAGGED_HOST_HEAP", " System ")
    assert host_heap.keep_freed_memory(8 * GiB) is None
    assert fresh.calls == []
    host_heap.trim()  # handing back is still allowed (a model released, an OOM)
    assert fresh.trims == 1


def test_a_refused_setting_is_reported_as_nothing_set(fresh: FakeLibc) -> None:
    fresh.accept = False
    assert host_heap.keep_freed_memory(8 * GiB) is None


def test_off_glibc_nothing_is_touched(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(host_heap.ENV, raising=False)
    monkeypatch.setattr(host_heap, "_kept", None)
    monkeypatch.setattr(host_heap, "_libc", None)
    monkeypatch.setattr(host_heap.platform, "libc_ver", lambda: ("", ""))
    assert host_heap.keep_freed_memory(8 * GiB) is None
    assert not host_heap.can_trim()
    host_heap.trim()  # a no-op, not an error
