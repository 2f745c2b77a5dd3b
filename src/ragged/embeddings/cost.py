"""How much a page costs to embed, before the model runs.

The processor's own geometry gives each page's visual tokens: ColPali a
fixed 1,024, ColQwen2 its resized area over 28x28 pixels, ColModernVBert
64 per 512-pixel tile plus a global view. Sequence length drives both the
memory and the time of a forward pass, so batches are planned by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from loguru import logger
from PIL import Image

_FALLBACK_PATCH = 28  # pixels per token side when a processor has no geometry API


def visual_tokens(processor: Any, images: Sequence[Image.Image]) -> list[int]:
    """Visual tokens each image will take, from the processor's geometry."""
    if not images:
        return []
    sizes = [[img.height, img.width] for img in images]
    counter = getattr(processor, "_get_num_multimodal_tokens", None)
    if counter is not None:
        try:
            data = counter(image_sizes=sizes)
            tokens = getattr(data, "num_image_tokens", None)
            if tokens is not None and len(tokens) == len(images):
                return [int(t) for t in tokens]
        except Exception as exc:  # geometry API differs across versions
            logger.debug("processor token count failed ({}); using a pixel estimate", exc)
    fixed = getattr(processor, "image_seq_length", None)
    if isinstance(fixed, int) and fixed > 0:
        return [fixed] * len(images)
    return [max(1, (h // _FALLBACK_PATCH) * (w // _FALLBACK_PATCH)) for h, w in sizes]


def text_tokens(processor: Any, texts: Sequence[str]) -> list[int]:
    """Token count of each text under the processor's tokenizer."""
    if not texts:
        return []
    encoded = processor.tokenizer(list(texts), add_special_tokens=True)["input_ids"]
    return [len(ids) for ids in encoded]


def prompt_overhead(processor: Any) -> int:
    """Tokens a page's sequence holds besides its visual tokens (the prompt),
    measured once by processing a small blank page."""
    blank = Image.new("RGB", (64, 64), "white")
    try:
        inputs = processor.process_images([blank])
        total = int(inputs["attention_mask"].sum())
    except Exception as exc:  # an unusual processor: fall back to a typical prompt
        logger.debug("could not measure the prompt length ({})", exc)
        return 16
    return max(0, total - visual_tokens(processor, [blank])[0])


def page_view_size(processor: Any, width: int, height: int, margin: float = 1.25) -> tuple[int, int]:
    """The largest size a page needs to be for the model to see all it will
    see, at most (width, height): pages are rendered or scaled to this
    before they are held, so a poster-sized page never sits in memory.

    ``margin`` keeps some resolution above the processor's own target, so
    its resize (and rounding to patch multiples) gives the same geometry.
    """
    images = getattr(processor, "image_processor", processor)
    size = getattr(images, "size", None)

    def get(key: str) -> Any:
        return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

    scale = 1.0
    max_pixels = getattr(images, "max_pixels", None) or (get("longest_edge") if get("shortest_edge") else None)
    fixed_h, fixed_w = get("height"), get("width")
    if isinstance(max_pixels, int) and get("shortest_edge"):  # Qwen2-VL: a pixel budget
        scale = min(1.0, math.sqrt(margin * max_pixels / max(1, width * height)))
    elif fixed_h and fixed_w:  # SigLIP (ColPali): a fixed square, aspect ignored
        scale = min(1.0, margin * max(fixed_w / width, fixed_h / height))
    elif get("longest_edge"):  # Idefics3 (ColModernVBert): the longest edge, then tiles
        scale = min(1.0, margin * float(get("longest_edge")) / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))
