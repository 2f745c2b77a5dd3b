"""Options several commands share: flag, then ``RAGGED_*`` variable, then the
config file, then the default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ragged.config import setting
from ragged.gpu.registry import device_choices
from ragged.paths import default_index_dir

DEVICE_HELP = f"{device_choices()}. Only auto may fall back to the CPU."


def _expand(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    """``~`` expanded once, at the boundary, for flags, variables and the config file alike."""
    return None if value is None else Path(value).expanduser()


def index_option(f: Any) -> Any:
    return click.option(
        "--index", "index_dir", type=click.Path(path_type=Path, readable=False), envvar="RAGGED_INDEX",
        show_envvar=True,
        default=lambda: setting("index") or default_index_dir(), callback=_expand, help="Index folder.",
    )(f)


def device_option(f: Any) -> Any:
    return click.option(
        "--device", envvar="RAGGED_DEVICE", show_envvar=True, default=lambda: setting("device", "auto"),
        help=DEVICE_HELP,
    )(f)


def memory_target_option(f: Any) -> Any:
    return click.option(
        "--memory-target", type=click.FloatRange(0.2, 1.0), envvar="RAGGED_MEMORY_TARGET", show_envvar=True,
        default=lambda: setting("memory_target", 0.75),
        help="Share of a device ragged aims to use; batches and models stay under it less a 10% margin.",
    )(f)


def policy(memory_target: float) -> Any:
    from ragged.gpu.policy import MemoryPolicy

    return MemoryPolicy(target_utilisation=memory_target)
