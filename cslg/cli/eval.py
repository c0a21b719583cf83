"""``cslg eval`` and ``eval.py``: step 4, score a run folder (or a plain folder of images) with OCR into tables and
plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import ALL_ENGINES, OCR_ENGINES
from .common import one_line_errors

DEFAULTS = dict(engine="easyocr", bootstrap=1000, seed=0, out_subdir="eval")


def configure(p: argparse.ArgumentParser, **overrides) -> argparse.ArgumentParser:
    """The flags of step 4; ``overrides`` are a script's constants (keys of ``DEFAULTS``)."""
    d = {**DEFAULTS, **overrides}
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="DIR", help="run folder with manifest.jsonl and the images")
    source.add_argument("--images", type=Path, metavar="DIR", help="plain folder of images (needs --prompts)")
    p.add_argument("--prompts", type=Path, metavar="FILE", help="generation prompt file for --images")
    p.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (default: <run|images>/{d['out_subdir']})")
    p.add_argument("--engine", choices=[*OCR_ENGINES, ALL_ENGINES], default=d["engine"],
                   help=f"OCR engine; {ALL_ENGINES}: score with every engine and write their per-image agreement "
                        "(agreement.csv) and its means in summary.csv")
    p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                   help="run OCR on the GPU (default: when CUDA is available)")
    p.add_argument("--bootstrap", type=int, default=d["bootstrap"], metavar="N", help="bootstrap resamples (0: no CIs)")
    p.add_argument("--seed", type=int, default=d["seed"], help="bootstrap seed")
    p.add_argument("--force", action="store_true", help="OCR every image again, ignoring earlier results")
    p.set_defaults(out_subdir=d["out_subdir"])
    return p


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Score the images and print the summary; returns the ``cslg.evaluation.EvalResult``."""
    if args.images is not None and args.prompts is None:
        parser.error("--images needs --prompts (the generation prompt file the images were made from)")
    if args.run is not None and args.prompts is not None:
        parser.error("--prompts goes with --images; a run folder's manifest already holds the prompts")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    from ..evaluation import (
        evaluate,
        format_summary,
        load_manifest,
        records_from_images,
    )
    from ..evaluation.ocr import engine_names, get_engine

    base_dir = args.run if args.run is not None else args.images
    out_dir = args.out if args.out is not None else base_dir / args.out_subdir
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"--out {out_dir} is a file, not a folder")
    try:  # bad inputs end with their message, not a traceback
        if args.run is not None:
            records = load_manifest(args.run)
        else:
            records = records_from_images(args.images, args.prompts, exclude=[out_dir])
        engines = [get_engine(name, gpu=args.gpu) for name in engine_names(args.engine)]
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    result = evaluate(records, base_dir, out_dir, engines, n_bootstrap=args.bootstrap, seed=args.seed, force=args.force)
    print(format_summary(result.summary))
    n_errors = sum(s["n_errors"] for s in result.summary)
    print(f"\n{len(records)} images, {n_errors} not scored (see the error column); outputs in {out_dir}:")
    for path in result.files.values():
        print(f"  {path}")
    return result
