"""Running ``ragged`` as a fresh process from a benchmark."""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def ragged_command(*args: str) -> list[str]:
    """The command line of ``ragged ARGS`` in this environment."""
    return [str(Path(sys.executable).parent / "ragged"), *args]


def ragged_env(cache: str) -> dict[str, str]:
    """The environment a benchmark runs ``ragged`` in: its model cache, offline, no config file."""
    return {**os.environ, "RAGGED_CACHE_DIR": cache, "HF_HUB_OFFLINE": "1", "RAGGED_CONFIG": "/nonexistent"}


def process_seconds(args: list[str], repeat: int = 5, env: dict[str, str] | None = None) -> float:
    """Median wall time of ``ragged ARGS`` as a fresh process."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(ragged_command(*args), env=env, capture_output=True, check=True, timeout=600)
        times.append(time.perf_counter() - start)
    return statistics.median(times)
