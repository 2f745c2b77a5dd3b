"""Ctrl-C is held back while an import runs (a native module initialising
would abort the process), and is immediate otherwise."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

SCRIPT = """
import sys, time
from ragged.cli import install_interrupt_handler
install_interrupt_handler()
sys.path.insert(0, {folder!r})
began = time.monotonic()
try:
    {body}
    time.sleep(5)
    print("not interrupted")
except KeyboardInterrupt:
    module = sys.modules.get("slow_module")
    print(f"interrupted {{time.monotonic() - began:.2f}} s in; imported: {{getattr(module, 'done', False)}}")
"""


def run(tmp_path: Path, body: str) -> tuple[float, str]:
    """Seconds from the start to the interrupt (inf: none), and whether the module was imported."""
    (tmp_path / "slow_module.py").write_text(
        "import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.3)\ndone = True\n")
    script = SCRIPT.format(folder=str(tmp_path), body=body)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60,
                         check=False).stdout.strip()
    if not out.startswith("interrupted "):
        return math.inf, out
    seconds, imported = out.removeprefix("interrupted ").split(" s in; imported: ")
    return float(seconds), imported


def test_ctrl_c_during_an_import_waits_until_the_import_is_done(tmp_path: Path) -> None:
    # The module interrupts itself half-way through its body: the import still completes, then Ctrl-C acts.
    seconds, imported = run(tmp_path, "import slow_module")
    assert imported == "True" and 0.3 <= seconds < 4  # after the module's 0.3 s, well before the 5 s sleep


def test_ctrl_c_outside_an_import_is_immediate(tmp_path: Path) -> None:
    seconds, imported = run(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGINT); time.sleep(1)")
    assert imported == "False" and seconds < 0.9  # not after the 1 s sleep
