"""Ctrl-C while a native library imports: held back until the import ends.

A ``KeyboardInterrupt`` raised inside torch's import unwinds through its
C++ (pybind11) start-up code, which cannot pass it on: the process aborts
(``terminate called after throwing an instance of
'pybind11::error_already_set'``, exit status -6) instead of saying
"interrupted.". It happened about once in 60 Ctrl-Cs during ``ragged
search``'s first second under load. The commands import torch lazily, from
several places, so :func:`hold_interrupts_during_import` hooks the import
itself: while such a module's code runs, SIGINT is blocked in this thread
(the kernel keeps it pending), and it is delivered the moment the import
ends, where Python raises it as usual.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType

NATIVE = frozenset({"torch"})  # top-level packages whose import must not be interrupted


@contextmanager
def interrupts_held() -> Iterator[None]:
    """Block SIGINT in this thread for the block; one that arrives meanwhile
    is delivered as the block ends. Off the main thread, or where signals
    cannot be masked (Windows), it does nothing."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, before)


class _HeldLoader(importlib.machinery.SourceFileLoader):
    """The usual loader of a package's ``__init__.py``, run with interrupts held."""

    def exec_module(self, module: ModuleType) -> None:
        with interrupts_held():
            super().exec_module(module)


class _HoldingFinder(importlib.abc.MetaPathFinder):
    """Finds the listed top-level modules as the path finder does, with a
    loader that holds interrupts; any other module it leaves to the rest."""

    def __init__(self, names: frozenset[str]) -> None:
        self.names = names

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        loader = spec.loader if spec is not None else None
        if spec is None or type(loader) is not importlib.machinery.SourceFileLoader:
            return spec
        spec.loader = _HeldLoader(loader.name, loader.path)
        return spec


def hold_interrupts_during_import(names: frozenset[str] = NATIVE) -> None:
    """From now on, importing one of ``names`` (top-level) holds Ctrl-C back
    until that import ends (see the module docstring); once per process."""
    if not any(isinstance(finder, _HoldingFinder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _HoldingFinder(names))
