"""Model names: presets, hub ids, folders. Light: imports no torch.

The index records the model that built it, and that record decides what a
later search loads; so what may be read back from an index is checked
here against what ingest writes: a preset name, a hub id, or an absolute
folder path.
"""

from __future__ import annotations

import re
from pathlib import Path

DEFAULT_MODEL = "vidore/colpali-v1.3-hf"
PRESETS: tuple[str, ...] = ("tiny-colpali", "tiny-colqwen2", "tiny-colmodernvbert")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_preset(name: str) -> bool:
    """True when ``name`` is one of ragged's built-in tiny presets."""
    return name in PRESETS


def is_hub_id(name: str) -> bool:
    """True when ``name`` reads as ``org/name`` on the Hugging Face hub."""
    return bool(HUB_ID.match(name)) and ".." not in name


def stored_name(name: str) -> str:
    """What ingest records for the model the user named: local folders
    become absolute paths, so the index works from any folder."""
    if is_preset(name):
        return name
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name


def is_storable(name: str) -> bool:
    """True for a name ingest could have written: a preset, a hub id, or an
    absolute path."""
    if not isinstance(name, str) or not name or "\x00" in name:
        return False
    return is_preset(name) or is_hub_id(name) or (Path(name).is_absolute() and ".." not in Path(name).parts)
