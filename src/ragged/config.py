"""User settings: command-line flag, then ``RAGGED_*`` variable, then the
config file, then the built-in default.

The config file is TOML at ``$RAGGED_CONFIG`` or ``config.toml`` in the
user config folder, with any of: ``model``, ``device``, ``index``, ``dpi``,
``batch_size``, ``memory_target``, ``text_model``.
"""

from __future__ import annotations

import os
import tomllib
from functools import lru_cache
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from ragged.errors import ConfigurationError

KEYS = {"model", "device", "index", "dpi", "batch_size", "memory_target", "text_model"}


def config_path() -> Path:
    """Where the config file is looked for."""
    return Path(os.environ.get("RAGGED_CONFIG") or Path(user_config_dir("ragged")) / "config.toml").expanduser()


def load_config() -> dict[str, Any]:
    """The config file's settings ({} when there is none)."""
    return _read_config(config_path())


def forget_config() -> None:
    """Forget the config files read so far: the next read sees their edits."""
    _read_config.cache_clear()


@lru_cache(maxsize=4)
def _read_config(path: Path) -> dict[str, Any]:
    """One config file's settings, read once per process."""
    try:
        if not path.is_file():
            return {}
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigurationError(f"Cannot read config file {path} ({exc.strerror or exc}); fix its permissions, "
                                 "or set RAGGED_CONFIG to another file.") from exc
    except UnicodeDecodeError as exc:
        raise ConfigurationError(f"Config file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}); "
                                 "fix or remove it.") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"Config file {path} is not valid TOML ({exc}); fix or remove it.") from exc
    unknown = set(data) - KEYS
    if unknown:
        raise ConfigurationError(f"Config file {path} has unknown keys {sorted(unknown)}; allowed: {sorted(KEYS)}.")
    return data


def setting(key: str, default: Any = None) -> Any:
    """A setting from the config file, else ``default``."""
    return load_config().get(key, default)
