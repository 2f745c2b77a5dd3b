"""Tiny presets: ColPali-family models that ragged builds itself, offline.

``tiny-colpali``, ``tiny-colqwen2`` and ``tiny-colmodernvbert`` have the real
architectures and processors at a minute size (0.2-0.3 M parameters) with
random weights from a fixed seed. They exist so that tests, the offline
demo and benchmarks of the machinery run anywhere; their scores carry no
meaning. Each is built once into a cache folder (atomically) and then
loaded through the same ``from_pretrained`` path as a real checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragged.embeddings.hf import quiet_transformers
from ragged.embeddings.names import PRESETS, is_preset

PRESET_VERSION = "v1"
_SEED = 1234
_CORPUS = [
    "Describe the image.",
    "Question: what is the total revenue in the annual report?",
    "Query: which page shows the invoice date and amount?",
    "the quick brown fox jumps over the lazy dog",
    "table figure chart summary contract section appendix",
] * 8


def _tokenizer(specials: list[str], **named: str | None) -> Any:
    """A byte-level BPE tokenizer trained in-process on a fixed corpus."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    unk = named.get("unk_token")
    tok = Tokenizer(models.BPE(unk_token=unk))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **{k: v for k, v in named.items() if v})
    fast.padding_side = "right"
    return fast


def _build_colpali() -> tuple[Any, Any]:
    from transformers import ColPaliConfig, ColPaliForRetrieval, ColPaliProcessor
    from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

    tok = _tokenizer(
        ["<pad>", "<eos>", "<bos>", "<unk>", "<image>"],
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )
    images = SiglipImageProcessorPil(size={"height": 448, "width": 448})
    setattr(images, "image_seq_length", 1024)  # noqa: B010  (448 / 14) ** 2 patches; ColPaliProcessor reads it
    processor = ColPaliProcessor(image_processor=images, tokenizer=tok)
    vocab = len(processor.tokenizer)  # the processor adds ~1,150 <loc>/<seg> tokens
    vlm = {
        "model_type": "paligemma",
        "vision_config": {
            "model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64,
            "num_hidden_layers": 2, "num_attention_heads": 2, "image_size": 448, "patch_size": 14,
            "projection_dim": 128,
        },
        "text_config": {
            "model_type": "gemma", "vocab_size": vocab, "hidden_size": 128, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 32,
            "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id,
        },
        "image_token_id": processor.image_token_id,
        "projection_dim": 128,
        "vocab_size": vocab,
    }
    return ColPaliForRetrieval(ColPaliConfig(vlm_config=vlm, embedding_dim=128)), processor


def _build_colqwen2() -> tuple[Any, Any]:
    from transformers import ColQwen2Config, ColQwen2ForRetrieval, ColQwen2Processor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>",
                "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
    tok = _tokenizer(specials, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    images = Qwen2VLImageProcessorPil(
        min_pixels=56 * 56, max_pixels=768 * 28 * 28, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = ColQwen2Processor(image_processor=images, tokenizer=tok)
    ids = {t: tok.convert_tokens_to_ids(t) for t in specials}
    vlm = {
        "model_type": "qwen2_vl",
        "text_config": {
            "vocab_size": len(processor.tokenizer), "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            # mrope_section must sum to head_dim / 2 = 16.
            "rope_parameters": {"rope_type": "default", "mrope_section": [4, 6, 6], "rope_theta": 10000.0},
            "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        "vision_config": {
            "depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "mlp_ratio": 2,
            "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3,
        },
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    return ColQwen2ForRetrieval(ColQwen2Config(vlm_config=vlm, embedding_dim=128)), processor


def _build_colmodernvbert() -> tuple[Any, Any]:
    from transformers import ColModernVBertConfig, ColModernVBertForRetrieval, ColModernVBertProcessor
    from transformers.models.idefics3.image_processing_pil_idefics3 import Idefics3ImageProcessorPil

    grid = [f"<row_{i}_col_{j}>" for i in range(1, 7) for j in range(1, 7)]
    specials = ["<|endoftext|>", "<|begin_of_text|>", "<pad>", "<unk>", "<fake_token_around_image>",
                "<image>", "<end_of_utterance>", "<global-img>", *grid]
    tok = _tokenizer(
        specials, bos_token="<|begin_of_text|>", eos_token="<|endoftext|>", pad_token="<pad>", unk_token="<unk>"
    )
    images = Idefics3ImageProcessorPil(
        size={"longest_edge": 1024}, max_image_size={"longest_edge": 512}, do_image_splitting=True
    )
    processor = ColModernVBertProcessor(image_processor=images, tokenizer=tok, image_seq_len=64)
    vocab = len(processor.tokenizer)
    vlm = {
        "model_type": "modernvbert",
        "text_config": {
            "vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2, "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
            "eos_token_id": tok.eos_token_id, "cls_token_id": tok.bos_token_id,
            "sep_token_id": tok.eos_token_id, "global_attn_every_n_layers": 1, "local_attention": 64,
        },
        "vision_config": {
            "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
            "image_size": 512, "patch_size": 16,
        },
        "image_token_id": processor.image_token_id,
        "pixel_shuffle_factor": 4,  # (512 / 16)^2 / 4^2 = 64 tokens per tile
    }
    return ColModernVBertForRetrieval(ColModernVBertConfig(vlm_config=vlm, embedding_dim=128)), processor


_BUILDERS: dict[str, Callable[[], tuple[Any, Any]]] = {
    "tiny-colpali": _build_colpali,
    "tiny-colqwen2": _build_colqwen2,
    "tiny-colmodernvbert": _build_colmodernvbert,
}

assert tuple(_BUILDERS) == PRESETS

__all__ = ["PRESETS", "build_preset", "ensure_preset", "is_preset"]


def build_preset(name: str, folder: Path) -> None:
    """Build preset ``name`` from a fixed seed and save it to ``folder``."""
    import torch

    fork = torch.random.fork_rng(devices=[])
    with quiet_transformers(), fork:
        torch.manual_seed(_SEED)
        model, processor = _BUILDERS[name]()
    model.eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)


def ensure_preset(name: str, cache_dir: Path) -> Path:
    """The folder holding preset ``name``, building it on first use.

    The build happens in a temporary folder that is renamed into place, so
    an interrupted build never leaves a half-written model behind.
    """
    target = cache_dir / "presets" / f"{name}-{PRESET_VERSION}"
    if (target / "config.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        build_preset(name, staging)
        try:
            os.replace(staging, target)
        except OSError:
            if not (target / "config.json").is_file():  # lost a race to nobody: real error
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target
