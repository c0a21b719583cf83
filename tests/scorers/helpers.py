"""Shared pieces of the scorer tests: small images of every kind a run folder may hold."""

from __future__ import annotations

import numpy as np
from PIL import Image


def images(n: int = 3, size: int = 48, seed: int = 0) -> list[Image.Image]:
    """``n`` random RGB images of ``size`` px (different sizes and aspect ratios after the first)."""
    rng = np.random.default_rng(seed)
    shapes = [(size, size), (size, size // 2 + 8), (size // 2 + 8, size)]
    return [Image.fromarray(rng.integers(0, 256, (*shapes[i % 3], 3), dtype=np.uint8)) for i in range(n)]


PROMPTS = ["a red book and a gold clock", "a cat on a sofa", "a city street at night, rain"]
