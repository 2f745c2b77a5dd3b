"""Ctrl-C during a native library's import is held back until the import ends."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# A package that is interrupted in the middle of its own import (it sends itself SIGINT), as torch's
# C++ start-up code is when Ctrl-C comes early: where is the KeyboardInterrupt raised, and did the body finish?
_SCRIPT = textwrap.dedent("""
    import builtins, json, os, signal, sys, traceback
    from ragged.cli.interrupts import hold_interrupts_during_import
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even where started with SIGINT ignored (a `&` job)
    sys.path.insert(0, sys.argv[1])
    if sys.argv[2] == "held":
        hold_interrupts_during_import(frozenset({"nativepkg"}))
    builtins.REACHED_END = False
    try:
        import nativepkg
        raised = "never"
    except KeyboardInterrupt as exc:
        inside = any(f.filename.endswith("__init__.py") and "nativepkg" in f.filename
                     for f in traceback.extract_tb(exc.__traceback__))
        raised = "inside the import" if inside else "after the import"
    blocked = signal.SIGINT in signal.pthread_sigmask(signal.SIG_BLOCK, set())
    print(json.dumps({"raised": raised, "reached_end": builtins.REACHED_END, "still_blocked": blocked}))
""")
_PACKAGE = textwrap.dedent("""
    import builtins, os, signal
    os.kill(os.getpid(), signal.SIGINT)
    total = sum(range(100_000))  # bytecode to run: an interrupt that is not held is raised here
    builtins.REACHED_END = True
""")


def _import(tmp_path: Path, mode: str) -> dict[str, object]:
    package = tmp_path / "nativepkg"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(_PACKAGE)
    out = subprocess.run([sys.executable, "-c", _SCRIPT, str(tmp_path), mode], capture_output=True, text=True,
                         timeout=60, check=True)
    result: dict[str, object] = json.loads(out.stdout)
    return result


@pytest.mark.skipif(sys.platform == "win32", reason="signals cannot be masked on Windows")
def test_an_interrupt_during_a_held_import_arrives_as_the_import_ends(tmp_path: Path) -> None:
    assert _import(tmp_path, "held") == {"raised": "after the import", "reached_end": True, "still_blocked": False}


@pytest.mark.skipif(sys.platform == "win32", reason="signals cannot be masked on Windows")
def test_without_the_hold_it_lands_inside_the_import(tmp_path: Path) -> None:
    """The control: the same package, not listed, is interrupted mid-import
    (what aborts torch's C++ start-up)."""
    assert _import(tmp_path, "plain") == {"raised": "inside the import", "reached_end": False,
                                          "still_blocked": False}
