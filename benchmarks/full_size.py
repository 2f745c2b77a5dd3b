"""Full-size ColPali-family architectures with random weights, built offline.

The GPU check needs real memory and compute behaviour without downloading
checkpoints: the architectures below have the published dimensions
(ColQwen2 on Qwen2-VL-2B, about 2.2 B parameters; ColModernVBert, about
250 M), random weights from a fixed seed, and the tokenizer and image
processor of the matching tiny preset (whose token ids the configs use).
``smoke`` builds one layer per tower and the tokenizer's own vocabulary,
for a quick run of the same code on the CPU. Only
transformers and ragged's public ``ensure_preset`` are used, so that a
rewrite of ragged's internals leaves this alone.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ragged.embeddings import ensure_preset


def _quiet() -> None:
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def processor_for(name: str, cache: Path) -> Any:
    """The processor of full-size model ``name``: its tiny preset's."""
    import transformers

    _quiet()
    preset, _, _, processor_cls = BUILDS[name]
    return getattr(transformers, processor_cls).from_pretrained(ensure_preset(preset, cache))


def colqwen2_2b(processor: Any, layers: int | None = None, vocab: int | None = None) -> Any:
    """ColQwen2 with Qwen2-VL-2B dimensions."""
    from transformers import ColQwen2Config

    tok = processor.tokenizer
    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ("<|endoftext|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")}
    vlm = {
        "model_type": "qwen2_vl",
        "text_config": {
            "vocab_size": vocab or 151936, "hidden_size": 1536, "intermediate_size": 8960,
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


def colmodernvbert_250m(processor: Any, layers: int | None = None, vocab: int | None = None) -> Any:
    """ColModernVBert with ModernBERT-base text and SigLIP-base/16-512 vision dimensions."""
    from transformers import ColModernVBertConfig

    tok = processor.tokenizer
    vlm = {
        "model_type": "modernvbert",
        "text_config": {
            "vocab_size": vocab or 50368, "hidden_size": 768, "intermediate_size": 1152,
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


# name -> (tiny preset, config builder, model class, processor class) in transformers
BUILDS = {
    "colqwen2-2b": ("tiny-colqwen2", colqwen2_2b, "ColQwen2ForRetrieval", "ColQwen2Processor"),
    "colmodernvbert-250m": ("tiny-colmodernvbert", colmodernvbert_250m, "ColModernVBertForRetrieval",
                            "ColModernVBertProcessor"),
}


def build(name: str, folder: Path, cache: Path, device: torch.device, dtype: torch.dtype,
          smoke: bool = False) -> Path:
    """Build ``name`` with random weights on ``device`` and save it to ``folder``
    (through a staging folder, so an interrupted build leaves nothing half-written)."""
    if (folder / "config.json").is_file():
        return folder
    import transformers

    _quiet()
    _, make_config, model_cls, _ = BUILDS[name]
    processor = processor_for(name, cache)
    config = make_config(processor, 1, len(processor.tokenizer)) if smoke else make_config(processor)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        default = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            with device:
                model = getattr(transformers, model_cls)(config)
        finally:
            torch.set_default_dtype(default)
    model.eval()
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    del model
    os.replace(staging, folder)
    return folder
