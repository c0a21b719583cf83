"""Contact sheets: the images of one prompt and seed side by side, each labelled with its method."""

from __future__ import annotations

import math
import textwrap
from pathlib import Path
from typing import Sequence

from matplotlib import font_manager
from PIL import Image, ImageDraw, ImageFont

from ..io import atomic_write

MAX_COLUMNS = 6
LABEL_HEIGHT = 28
TITLE_HEIGHT = 40


def _font(size: int) -> ImageFont.FreeTypeFont:
    # DejaVu ships with matplotlib, so labels look the same on every machine.
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def contact_sheet(images: Sequence[Path], labels: Sequence[str], title: str, path: Path, tile: int = 256) -> Path:
    """Write a grid of ``images`` (resized to ``tile`` px wide) with ``labels`` under each and a title."""
    cols = min(MAX_COLUMNS, len(images))
    rows = math.ceil(len(images) / cols)
    tiles = []
    for image_path in images:
        with Image.open(image_path) as im:
            scale = tile / im.width
            resample = Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS  # keep small images crisp
            tiles.append(im.convert("RGB").resize((tile, max(1, round(im.height * scale))), resample))
    tile_h = max(t.height for t in tiles)
    title_lines = textwrap.wrap(title, width=max(20, cols * tile // 9))[:3]
    top = TITLE_HEIGHT + 18 * (len(title_lines) - 1)
    sheet = Image.new("RGB", (cols * tile, top + rows * (tile_h + LABEL_HEIGHT)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((8, 8), "\n".join(title_lines), fill="black", font=_font(15))
    label_font = _font(13)
    for k, (im, label) in enumerate(zip(tiles, labels)):
        x, y = (k % cols) * tile, top + (k // cols) * (tile_h + LABEL_HEIGHT)
        sheet.paste(im, (x, y))
        draw.text((x + 4, y + tile_h + 5), label, fill="black", font=label_font)
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
