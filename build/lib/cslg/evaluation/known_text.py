"""A known-text check of the OCR setup: render the expected text of the first prompts of a prompt file as images
named by prompt index, which ``eval.py --images DIR --prompts FILE`` then scores (near 1 when OCR works).

    python -m cslg.evaluation.known_text --prompts prompt_datasets/text_eval_prompts.json --limit 5 --out outputs/ocr_check
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..io import atomic_write
from .ocr import render_text
from ..prompts import load_generation_prompts
from ..text import extract_quoted


def render_known_text(prompts_file: str, out: str | Path, limit: int) -> list[Path]:
    """``out/<index>.png`` with each prompt's expected text (or its quoted strings), one line, in DejaVu Sans."""
    paths = []
    for index, prompt in enumerate(load_generation_prompts(prompts_file, limit=limit)):
        text = " ".join(prompt.expected_text or extract_quoted(prompt.prompt))
        image = render_text(text, size=(max(320, 44 * len(text)), 120), font_size=64)
        paths.append(atomic_write(Path(out) / f"{index:04d}.png", lambda tmp: image.save(tmp, format="PNG")))
    return paths


def main(argv=None) -> list[Path]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", default="prompt_datasets/text_eval_prompts.json", help="generation prompt file")
    p.add_argument("--limit", type=int, default=5, help="how many prompts")
    p.add_argument("--out", default="outputs/ocr_check", help="folder for the images")
    args = p.parse_args(argv)
    paths = render_known_text(args.prompts, args.out, args.limit)
    print(f"rendered {len(paths)} known-text images into {args.out}; score them with: "
          f"python eval.py --images {args.out} --prompts {args.prompts}")
    return paths


if __name__ == "__main__":
    main()
