"""Synthetic page images for tests: deterministic, of chosen sizes."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw


def make_pages(sizes: list[tuple[int, int]], seed: int = 0) -> list[Image.Image]:
    """One RGB page per (width, height), with noise and a line of text."""
    rng = np.random.default_rng(seed)
    pages = []
    for n, (width, height) in enumerate(sizes):
        pixels = rng.integers(180, 255, (height, width, 3), dtype=np.uint8)
        page = Image.fromarray(pixels)
        ImageDraw.Draw(page).text((10, 10), f"Page {n}: quarterly revenue table", fill=(0, 0, 0))
        pages.append(page)
    return pages


MIXED = [(448, 448), (612, 792), (300, 500), (850, 1100), (448, 448), (640, 480), (200, 200), (1000, 800)]
