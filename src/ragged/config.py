"""User settings: command-line flag, then ``RAGGED_*`` variable, then the
config file, then the built-in default.

The config file is TOML at ``$RAGGED_CONFIG`` or ``config.toml`` in the
user config folder, with any of: ``model``, ``device``, ``index``, ``dpi``,
``batch_size``, ``memory_target``, ``text_model``. Each value is checked
when the file is read (type and range), so a wrong one is reported once,
naming the file and the key, before any command uses it.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from platformdirs import user_config_dir

from ragged.errors import ConfigurationError


@dataclass(frozen=True)
class _Rule:
    """What one key takes: a string, or a number within bounds."""

    kind: type  # str, int or float (an int is accepted where a float is asked)
    low: float | None = None
    high: float | None = None
    what: str = ""

    def problem(self, value: Any) -> str | None:
        """Why ``value`` does not fit, or None."""
        if self.kind is str:
            ok = isinstance(value, str) and value.strip() != ""
            return None if ok else f"must be {self.what} (a non-empty string), not {_describe(value)}"
        numeric = (int,) if self.kind is int else (int, float)
        if not isinstance(value, numeric) or isinstance(value, bool):
            return f"must be {self.what}, not {_describe(value)}"
        if (self.low is not None and value < self.low) or (self.high is not None and value > self.high):
            return f"must be {self.what}, not {value}"
        return None


RULES = {
    "model": _Rule(str, what="a model name"),
    "device": _Rule(str, what="a device such as auto, cpu or cuda:0"),
    "index": _Rule(str, what="a folder path"),
    "text_model": _Rule(str, what="a text model name or 'none'"),
    "dpi": _Rule(int, 36, 600, "a whole number from 36 to 600"),
    "batch_size": _Rule(int, 1, None, "a whole number of at least 1"),
    "memory_target": _Rule(float, 0.2, 1.0, "a number from 0.2 to 1.0"),
}
KEYS = set(RULES)


def _describe(value: Any) -> str:
    kind = {bool: "true/false", int: "a number", float: "a number", str: "a string", list: "a list",
            dict: "a table"}.get(type(value), type(value).__name__)
    shown = repr(value)
    return f"{kind} ({shown if len(shown) <= 40 else shown[:37] + '...'})"


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
    for key, value in data.items():
        if (problem := RULES[key].problem(value)) is not None:
            raise ConfigurationError(f"Config file {path}: '{key}' {problem}; fix it or remove the line.")
    return data


def setting(key: str, default: Any = None) -> Any:
    """A setting from the config file, else ``default``."""
    return load_config().get(key, default)
