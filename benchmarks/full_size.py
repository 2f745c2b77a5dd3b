"""Full-size ColPali-family architectures with random weights, built offline.

The GPU check needs real memory and compute behaviour without downloading
checkpoints: the architectures below have the published dimensions
(ColQwen2 on Qwen2-VL-2B, about 2.2 B parameters; ColModernVBert, about
250 M), random weights from a fixed seed, and the tokenizer and image
processor of the matching tiny preset (whose token ids the configs use).
``layers`` shrinks the depth for a quick smoke run on the CPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ragged.embeddings.families import family_for_config
from ragged.embeddings.hf import quiet_transformers
from ragged.embeddings.presets import ensure_preset


def _processor(preset: str, cache: Path) -> Any:
    folder = ensure_preset(preset, cache)
    import json

    family = family_for_config(json.loads((folder / "config.json").read_text()))
    return family.processor_cls().from_pretrained(folder)


def colqwen2_2b(processor: Any, layers: int | None = None) -> Any:
    """ColQwen2 with Qwen2-VL-2B dimensions."""
    from transformers import ColQwen2Config

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    vlm = {
        "model_type": "qwen2_vl",
        "text_config": {
            "vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960,
            "num_hidden_layers": layers or 28, "num_attention_heads": 12, "num_key_value_heads": 2,
            "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "depth": layers or 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
        },
        "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
    }
    return ColQwen2Config(vlm_config=vlm, embedding_dim=128)


def colmodernvbert_250m(processor: Any, layers: int | None = None) -> Any:
    """ColModernVBert with ModernBERT-base text and SigLIP-base/16-512 vision dimensions."""
    from transformers import ColModernVBertConfig

    tok = processor.tokenizer
    vlm = {
        "model_type": "modernvbert",
        "text_config": {
            "vocab_size": 50368, "hidden_size": 768, "intermediate_size": 1152,
            "num_hidden_layers": layers or 22, "num_attention_heads": 12, "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id, "cls_token_id": tok.bos_token_id,
            "sep_token_id": tok.eos_token_id,
        },
        "vision_config": {
            "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": layers or 12,
            "num_attention_heads": 12, "image_size": 512, "patch_size": 16,
        },
        "image_token_id": processor.image_token_id,
        "pixel_shuffle_factor": 4,
    }
    return ColModernVBertConfig(vlm_config=vlm, embedding_dim=128)


BUILDS = {"colqwen2-2b": ("tiny-colqwen2", colqwen2_2b), "colmodernvbert-250m": ("tiny-colmodernvbert",
                                                                             colmodernvbert_250m)}


def build(name: str, folder: Path, cache: Path, device: torch.device, dtype: torch.dtype,
          layers: int | None = None) -> Path:
    """Build ``name`` with random weights on ``device`` and save it to ``folder``."""
    if (folder / "config.json").is_file():
        return folder
    quiet_transformers()
    preset, make_config = BUILDS[name]
    processor = _processor(preset, cache)
    config = make_config(processor, layers)
    family = family_for_config(config.to_dict())
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = family.model_cls()(config)
        finally:
            torch.set_default_dtype(default)
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder
