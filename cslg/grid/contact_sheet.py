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
LABEL_LINE = 16  # height of each further line of a label wrapped to the tile's width
MAX_LABEL_LINES = 3
TITLE_HEIGHT = 40
GAP = 8  # white space between tiles
MARK_COLOR = (230, 120, 0)  # frame and label of a cell whose settings make it equal another method


def _font(size: int) -> ImageFont.FreeTypeFont:
    # DejaVu ships with matplotlib, so labels look the same on every machine.
    return ImageFont.truetype(font_manager.findfont("DejaVu Sans"), size)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """``text`` in lines no wider than ``width`` pixels, broken at spaces (a longer word stays whole), at most
    ``MAX_LABEL_LINES`` (the last one ends in an ellipsis when cut)."""
    lines: list[str] = []
    for word in text.split():
        if lines and draw.textlength(f"{lines[-1]} {word}", font=font) <= width:
            lines[-1] += f" {word}"
        else:
            lines.append(word)
    if len(lines) > MAX_LABEL_LINES:
        lines = lines[:MAX_LABEL_LINES]
        lines[-1] += " …"
    return lines or [""]


def contact_sheet(images: Sequence[Path], labels: Sequence[str], title: str, path: Path, tile: int = 256,
                  marks: Sequence[str | None] = ()) -> Path:
    """Write a grid of ``images`` (resized to ``tile`` px wide, ``GAP`` px apart) with ``labels`` under each (wrapped
    to the tile's width) and a title. ``marks``: per image, why its settings make it equal another method (``degenerate``'s reason) or
    ``None``; a marked cell gets an orange frame and its label says what it equals."""
    marks = list(marks) or [None] * len(images)
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
    label_font = _font(13)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    texts = [label if not mark else f"{label} (= {mark.rsplit('equals ', 1)[-1]})" if "equals " in mark
             else f"{label} (degenerate)" for label, mark in zip(labels, marks)]
    wrapped = [_wrap(measure, text, label_font, tile - 8) for text in texts]
    label_h = LABEL_HEIGHT + LABEL_LINE * (max(map(len, wrapped)) - 1)
    sheet = Image.new("RGB", (cols * (tile + GAP) + GAP, top + rows * (tile_h + label_h + GAP)), "white")
    draw = ImageDraw.Draw(sheet)
    draw.multiline_text((GAP, 8), "\n".join(title_lines), fill="black", font=_font(15))
    for k, (im, lines, mark) in enumerate(zip(tiles, wrapped, marks)):
        x, y = GAP + (k % cols) * (tile + GAP), top + (k // cols) * (tile_h + label_h + GAP)
        sheet.paste(im, (x, y))
        if mark:
            draw.rectangle((x - 3, y - 3, x + tile + 2, y + tile_h + 2), outline=MARK_COLOR, width=3)
        draw.multiline_text((x + 4, y + tile_h + 5), "\n".join(lines), fill=MARK_COLOR if mark else "black",
                            font=label_font, spacing=LABEL_LINE - 13)
    return atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))
