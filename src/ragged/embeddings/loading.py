"""Resolve a model name (preset, local folder or hub id) and load it."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from loguru import logger

from ragged.embeddings.families import ModelFamily, family_for_config
from ragged.embeddings.hf import quiet_transformers
from ragged.embeddings.names import PRESETS, is_hub_id, is_preset
from ragged.embeddings.presets import ensure_preset
from ragged.errors import ModelError, UnknownModelError
from ragged.gpu.types import DeviceInfo, DeviceType


@dataclass(frozen=True)
class ModelSource:
    """Where a model comes from and which family loads it."""

    name: str  # as the user wrote it
    location: str  # local folder or hub id
    family: ModelFamily
    config: dict[str, Any]
    is_local: bool


def resolve_model(name: str, cache_dir: Path, *, local_files_only: bool = False) -> ModelSource:
    """Find ``name``: a tiny preset, a local folder, or a Hugging Face hub id."""
    if not name or not name.strip():
        raise UnknownModelError("No model name given. Use --model with a hub id, a folder or a preset.")
    if is_preset(name):
        folder = ensure_preset(name, cache_dir)
        return _local_source(name, folder)
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise UnknownModelError(f"Model folder {path} has no config.json: point --model at a saved model.")
        return _local_source(name, path)
    if not is_hub_id(name):
        raise UnknownModelError(
            f"Unknown model {name!r}: not a folder, not a hub id (org/name), not a preset "
            f"({', '.join(PRESETS)})."
        )
    return _hub_source(name, cache_dir, local_files_only)


def _local_source(name: str, folder: Path) -> ModelSource:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelError(f"Cannot read {folder / 'config.json'}: {exc}. Re-save or re-download the model.") from exc
    return ModelSource(name, str(folder), family_for_config(config), config, is_local=True)


def _hub_source(name: str, cache_dir: Path, local_files_only: bool) -> ModelSource:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    hub_cache = str(cache_dir / "hub")
    try:
        try:  # downloaded before: no network at all
            config_path = hf_hub_download(name, "config.json", cache_dir=hub_cache, local_files_only=True)
        except LocalEntryNotFoundError:
            if local_files_only or _offline() or not _hub_answers(name):
                raise
            config_path = hf_hub_download(name, "config.json", cache_dir=hub_cache)
    except LocalEntryNotFoundError as exc:  # offline, or the hub unreachable, and not downloaded before
        raise ModelError(
            f"Model {name!r} is not in the cache ({cache_dir}) and the Hugging Face hub cannot be reached "
            f"(offline{', HF_HUB_OFFLINE is set' if _offline() else ''}). Connect once to download it, pass a "
            f"local folder, or use a preset ({', '.join(PRESETS)})."
        ) from exc
    except GatedRepoError as exc:
        raise ModelError(
            f"Model {name!r} is gated on the Hugging Face hub: accept its licence on its page, then log in "
            "('hf auth login') and run the command again."
        ) from exc
    except (RepositoryNotFoundError, EntryNotFoundError) as exc:
        raise UnknownModelError(
            f"Unknown model {name!r}: the hub has no such model. Check the name, or use a preset "
            f"({', '.join(PRESETS)})."
        ) from exc
    except Exception as exc:  # offline, proxy, auth: one clear message
        raise ModelError(
            f"Cannot fetch model {name!r} from the Hugging Face hub ({type(exc).__name__}). "
            "Connect once to download it, pass a local folder, or use a preset "
            f"({', '.join(PRESETS)})."
        ) from exc
    config = json.loads(Path(config_path).read_text())
    return ModelSource(name, name, family_for_config(config), config, is_local=False)


HUB_PROBE_TIMEOUT_S = 5.0


def _hub_answers(name: str) -> bool:
    """True unless one request to the hub fails to connect (within
    ``HUB_PROBE_TIMEOUT_S``). The hub client retries a failed connection
    five times with back-off (about 25 s) before it says it is offline; one
    try decides it at once, and an answer of any kind (the model, a 404, a
    gated repository) leaves the real download, and its errors, to it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import HfHubHTTPError

    try:
        get_hf_file_metadata(hf_hub_url(name, "config.json"), timeout=HUB_PROBE_TIMEOUT_S)
    except HfHubHTTPError:  # the hub answered (404, 401, 429, 5xx...)
        return True
    except Exception as exc:  # no connection, DNS, proxy, TLS: the hub cannot be reached
        logger.debug("The hub cannot be reached ({}: {})", type(exc).__name__, exc)
        return False
    return True


def _offline() -> bool:
    import os

    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``bfloat16``, ``float16`` or ``float32``."""
    dtype = getattr(torch, name, None)
    if not isinstance(dtype, torch.dtype):
        raise ModelError(f"Unknown dtype {name!r}: use bfloat16, float16 or float32.")
    return dtype


MetaCounts = tuple[int, int, int]  # (floating-point elements, other parameter bytes, buffer bytes)
_META_COUNTS: dict[str, MetaCounts | None] = {}


def count_on_meta(build: Callable[[], torch.nn.Module]) -> MetaCounts | None:
    """What a model's weights hold, counted by building it (``build``) on the
    ``meta`` device: no memory, no download. None when it cannot be built."""
    try:
        with quiet_transformers(), torch.device("meta"):
            model = build()
    except Exception as exc:
        logger.debug("meta instantiation failed ({})", exc)
        return None
    floats = sum(p.numel() for p in model.parameters() if p.is_floating_point())
    others = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_floating_point())
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return floats, others, buffers


def weights_bytes(counts: MetaCounts, dtype: torch.dtype) -> int:
    """Bytes the counted weights take with their floats in ``dtype``."""
    floats, others, buffers = counts
    return floats * dtype.itemsize + others + buffers


def activation_bytes_per_token(config: Any, dtype_name: str) -> float:
    """A prior for activation memory per sequence token, from the config.

    Inference keeps a few hidden-size and MLP-width vectors per token live
    at once in the language model and the vision tower (none for a text
    model); the measured fit replaces this after the first batch.
    """
    element = torch_dtype(dtype_name).itemsize
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden = getattr(text, "hidden_size", 2048)
    mlp = getattr(text, "intermediate_size", 4 * hidden)
    vlm = getattr(config, "vlm_config", config)
    vision = getattr(vlm, "vision_config", None)
    v_hidden = getattr(vision, "hidden_size", 0) or getattr(vision, "embed_dim", 0)
    v_mlp = getattr(vision, "intermediate_size", 4 * v_hidden)
    return 1.5 * element * (6 * hidden + 3 * mlp + 4 * v_hidden + 2 * v_mlp)


def _build(source: ModelSource) -> torch.nn.Module:
    cls = source.family.model_cls()
    model: torch.nn.Module = cls._from_config(cls.config_class.from_dict(source.config))
    return model


def estimate_model_bytes(source: ModelSource, dtype: torch.dtype) -> int:
    """Bytes the weights take on the device in ``dtype``, counted on ``meta``
    once per model (the weight files' size where it cannot be built)."""
    if source.location not in _META_COUNTS:
        _META_COUNTS[source.location] = count_on_meta(lambda: _build(source))
    counts = _META_COUNTS[source.location]
    return weights_bytes(counts, dtype) if counts is not None else _weight_file_bytes(source)


def _weight_file_bytes(source: ModelSource) -> int:
    if not source.is_local:
        return 0
    folder = Path(source.location)
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin") for f in folder.glob(pattern))


def load_model(source: ModelSource, device: DeviceInfo, dtype: torch.dtype, cache_dir: Path) -> Any:
    """Load the model's weights onto ``device`` in ``dtype``, in eval mode."""
    kwargs: dict[str, Any] = {"dtype": dtype}
    if not source.is_local:
        kwargs["cache_dir"] = str(cache_dir / "hub")
    if device.device_type is DeviceType.MPS:
        kwargs["attn_implementation"] = "eager"  # sdpa kernels are incomplete on MPS (byaldi PR 78)
    try:
        with quiet_transformers():
            model = source.family.model_cls().from_pretrained(source.location, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"Loading model {source.name!r} failed: {exc}") from exc
    return model.to(device.torch_device).eval()


def load_processor(source: ModelSource, cache_dir: Path) -> Any:
    """Load the model's processor (tokenizer and image processor)."""
    kwargs: dict[str, Any] = {} if source.is_local else {"cache_dir": str(cache_dir / "hub")}
    try:
        with quiet_transformers():
            return source.family.processor_cls().from_pretrained(source.location, **kwargs)
    except ModelError:
        raise
    except Exception as exc:
        raise ModelError(f"Loading the processor of {source.name!r} failed: {exc}") from exc
