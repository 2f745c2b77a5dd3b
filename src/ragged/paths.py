"""Where ragged keeps its files; each location can be moved by a variable."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_cache_dir, user_data_dir


def cache_dir() -> Path:
    """Models (tiny presets, hub downloads): ``$RAGGED_CACHE_DIR`` or the user cache folder."""
    return Path(os.environ.get("RAGGED_CACHE_DIR") or user_cache_dir("ragged")).expanduser()


def default_index_dir() -> Path:
    """The index: ``$RAGGED_INDEX`` or ``index`` in the user data folder."""
    return Path(os.environ.get("RAGGED_INDEX") or Path(user_data_dir("ragged")) / "index").expanduser()
