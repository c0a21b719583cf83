"""Videos in run folders: the video itself (a lossless animated WebP, which Pillow writes without any video
encoder) and a frame strip PNG (evenly spaced frames side by side) that contact sheets show and the scorers read
frame by frame. Light: Pillow only."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from PIL import Image

from .io import atomic_write

STRIP_FRAMES = 8  # frames in a strip: the first, the last and evenly spaced ones between
VIDEO_SUFFIX = ".webp"


def strip_indices(n: int, most: int = STRIP_FRAMES) -> list[int]:
    """The frames of an ``n``-frame video a strip shows: all of them, or ``most`` evenly spaced from first to last."""
    if n <= most:
        return list(range(n))
    return sorted({round(k * (n - 1) / (most - 1)) for k in range(most)})


def frame_strip(frames: Sequence[Image.Image], indices: Sequence[int]) -> Image.Image:
    """The frames ``indices`` side by side, left to right."""
    w, h = frames[0].size
    strip = Image.new("RGB", (w * len(indices), h))
    for k, i in enumerate(indices):
        strip.paste(frames[i].convert("RGB"), (k * w, 0))
    return strip


def strip_frames(strip: Image.Image, n: int) -> list[Image.Image]:
    """The ``n`` frames of a frame strip (the inverse of ``frame_strip``)."""
    w = strip.width // n
    return [strip.crop((k * w, 0, (k + 1) * w, strip.height)) for k in range(n)]


def write_video(path: str | Path, frames: Sequence[Image.Image], fps: int) -> Path:
    """``frames`` as a looping lossless animated WebP at ``fps`` frames per second, written atomically."""
    def write(tmp: str) -> None:
        first, *rest = [f.convert("RGB") for f in frames]
        first.save(tmp, format="WEBP", save_all=True, append_images=rest, duration=round(1000 / fps), loop=0,
                   lossless=True)

    return atomic_write(path, write)
