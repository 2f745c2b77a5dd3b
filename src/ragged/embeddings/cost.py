"""How much a page costs to embed, before the model runs.

The processor's own geometry gives each page's visual tokens: ColPali a
fixed 1,024, ColQwen2 its resized area over 28x28 pixels, ColModernVBert
64 per 512-pixel tile plus a global view. Sequence length drives both the
memory and the time of a forward pass, so batches are planned by it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
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


@dataclass(frozen=True)
class PageView:
    """What a model's image processor does with a page's size, as plain data
    (it travels to render workers): a pixel budget (Qwen2-VL), a fixed size
    (SigLIP, ColPali: aspect ignored), or a longest edge (Idefics3)."""

    max_pixels: int | None = None
    fixed: tuple[int, int] | None = None  # (width, height)
    longest_edge: int | None = None
    margin: float = 1.25  # resolution kept above the processor's target, so its own resize sees the same

    @classmethod
    def of(cls, processor: Any) -> PageView:
        """The rule of ``processor``."""
        images = getattr(processor, "image_processor", processor)
        size = getattr(images, "size", None)

        def get(key: str) -> Any:
            return size.get(key) if isinstance(size, dict) else getattr(size, key, None)

        max_pixels = getattr(images, "max_pixels", None) or (get("longest_edge") if get("shortest_edge") else None)
        if isinstance(max_pixels, int) and get("shortest_edge"):
            return cls(max_pixels=max_pixels)
        if get("height") and get("width"):
            return cls(fixed=(int(get("width")), int(get("height"))))
        if get("longest_edge"):
            return cls(longest_edge=int(get("longest_edge")))
        return cls()

    def fit(self, width: int, height: int) -> tuple[int, int]:
        """The largest size a page of ``width x height`` needs to be for the
        model to see all it will see (never larger than it is)."""
        scale = 1.0
        if self.max_pixels:
            scale = min(1.0, math.sqrt(self.margin * self.max_pixels / max(1, width * height)))
        elif self.fixed:
            scale = min(1.0, self.margin * max(self.fixed[0] / width, self.fixed[1] / height))
        elif self.longest_edge:
            scale = min(1.0, self.margin * self.longest_edge / max(width, height))
        return max(1, round(width * scale)), max(1, round(height * scale))
