"""The open registry of device backends: a new kind of device is one file and one call.

Each registration names a kind (``cuda``, ``npu``), how to build its backend
(a class or a ``"module:Class"`` path, imported only when devices are
detected, so this module and ``ragged --help`` stay free of torch), its place
in the auto-selection order, and optionally a predicate that recognises its
out-of-memory errors and the Ray resource its workers claim. Everything that
lists devices (detection, hint parsing, help strings, OOM detection, Ray
scale-out) reads this registry; nothing else names device kinds::

    from ragged.gpu.registry import register_backend

    register_backend("npu", MyNPUBackend, indexed=True, description="Ascend NPU",
                     is_oom=lambda exc: "NPU out of memory" in str(exc))

Several backends may serve one kind (NVIDIA and ROCm both answer for
``cuda``); the first available in priority order wins.
"""

from __future__ import annotations

import importlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ragged.gpu.types import DeviceType

if TYPE_CHECKING:
    from ragged.gpu.backends.base import DeviceBackend

OOMPredicate = Callable[[BaseException], bool]
BackendFactory = Callable[[], "DeviceBackend"] | str  # a class, a callable, or "module:Class"

CPU_PRIORITY = 1000  # the CPU comes last: it is the fallback of every auto choice


@dataclass(frozen=True)
class BackendEntry:
    """One registered backend: its kind, where to build it, and what it tells the rest of ragged."""

    kind: DeviceType
    factory: BackendFactory
    priority: int  # lower is tried first by auto-selection
    description: str  # for help texts: "NVIDIA or AMD GPUs"
    is_oom: OOMPredicate | None = None  # recognises this kind's out-of-memory errors
    ray_resource: str | None = None  # the Ray resource one worker of this kind claims ("GPU")

    def build(self) -> DeviceBackend:
        """A fresh backend instance (imports its module on first use)."""
        factory = self.factory
        if isinstance(factory, str):
            module, _, name = factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
        backend: DeviceBackend = factory()  # type: ignore[operator]
        return backend


_entries: list[BackendEntry] = []
_lock = threading.Lock()
_generation = [0]  # bumped by every registration: cached device managers see the change


def register_backend(kind: str, factory: BackendFactory, *, indexed: bool = False, description: str = "",
                     priority: int | None = None, is_oom: OOMPredicate | None = None,
                     ray_resource: str | None = None) -> DeviceType:
    """Register a backend for devices of ``kind``; returns the kind.

    ``priority`` orders auto-selection (lower first; by default after the
    accelerators already registered and before the CPU). ``indexed`` kinds
    take ``kind:N`` hints. Registering the same factory for a kind again
    replaces the earlier entry."""
    member = DeviceType.register(kind, indexed=indexed)
    with _lock:
        if priority is None:
            accelerators = [e.priority for e in _entries if e.priority < CPU_PRIORITY]
            priority = max(accelerators, default=0) + 10
        entry = BackendEntry(member, factory, priority, description or kind.upper(), is_oom, ray_resource)
        _entries[:] = [e for e in _entries if not (e.kind is member and e.factory == factory)]
        _entries.append(entry)
        _entries.sort(key=lambda e: e.priority)
        _generation[0] += 1
    return member


def unregister_backend(kind: str, factory: BackendFactory | None = None) -> None:
    """Remove a kind's registrations (one factory's, or all of them). The
    kind's name stays known, so records that name it still parse."""
    member = DeviceType(kind)
    with _lock:
        _entries[:] = [e for e in _entries if not (e.kind is member and factory in (None, e.factory))]
        _generation[0] += 1


def entries() -> list[BackendEntry]:
    """Every registration, in auto-selection priority."""
    with _lock:
        return list(_entries)


def generation() -> int:
    """A number that changes whenever the registry does."""
    return _generation[0]


def build_backends() -> list[DeviceBackend]:
    """One instance of every registered backend, in priority order."""
    return [entry.build() for entry in entries()]


def registered_kinds() -> list[DeviceType]:
    """Kinds with at least one backend, in priority order (each once)."""
    return list(dict.fromkeys(e.kind for e in entries()))


def oom_predicates() -> list[OOMPredicate]:
    """The registered kinds' own out-of-memory predicates."""
    return [e.is_oom for e in entries() if e.is_oom is not None]


def ray_resource(kind: DeviceType | None) -> str | None:
    """The Ray resource a worker of ``kind`` claims (None: none; only CPUs).
    With no kind (auto): the resource of the first accelerator that has one."""
    for entry in entries():
        if (kind is None or entry.kind is kind) and entry.ray_resource:
            return entry.ray_resource
    return None


def device_choices() -> str:
    """The device hints the CLI accepts, for help texts: ``auto, cuda, cuda:N, ..., cpu``."""
    hints = ["auto"]
    for kind in registered_kinds():
        hints.append(kind.value)
        if kind.indexed:
            hints.append(f"{kind.value}:N")
    return ", ".join(hints)


def describe_kinds() -> str:
    """One line naming each kind and what it is (``cuda: NVIDIA or AMD GPUs; ...``)."""
    seen: dict[DeviceType, str] = {}
    for entry in entries():
        seen.setdefault(entry.kind, entry.description)
    return "; ".join(f"{kind.value}: {text}" for kind, text in seen.items())


def _builtin() -> None:
    """The backends ragged ships, registered by import path (no torch until detection)."""
    register_backend("cuda", "ragged.gpu.backends.cuda:CUDABackend", indexed=True, priority=10,
                     description="NVIDIA GPUs", ray_resource="GPU")
    register_backend("cuda", "ragged.gpu.backends.rocm:ROCmBackend", indexed=True, priority=20,
                     description="AMD GPUs (ROCm builds of torch)", ray_resource="GPU")
    register_backend("xpu", "ragged.gpu.backends.xpu:XPUBackend", indexed=True, priority=30,
                     description="Intel GPUs")
    register_backend("mps", "ragged.gpu.backends.mps:MPSBackend", priority=40, description="Apple Silicon GPUs")
    register_backend("cpu", "ragged.gpu.backends.cpu:CPUBackend", priority=CPU_PRIORITY,
                     description="the processor and its RAM")


_builtin()

__all__ = ["BackendEntry", "build_backends", "describe_kinds", "device_choices", "entries", "generation",
           "oom_predicates", "ray_resource", "register_backend", "registered_kinds", "unregister_backend"]

