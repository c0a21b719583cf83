"""``cslg eval`` and ``eval.py``: step 4, score a run folder (or a plain folder of images) with OCR and the scorers of
``cslg.scorers`` into tables and plots. The scorer flags (``--<name>-model``) are derived from the scorer registry."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .. import scorers as scorer_registry
from ..options import ALL_ENGINES, OCR_ENGINES, OCR_SCORER as OCR
from .common import one_line_errors

DEFAULTS = dict(engine="easyocr", bootstrap=1000, seed=0, out_subdir="eval", scorers=("ocr",), baseline="cfg")


def model_dest(name: str) -> str:
    """The argparse dest of ``--<name>-model``."""
    return f"{name.replace('-', '_')}_model"


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
    p.add_argument("--force", action="store_true", help="score every image again, ignoring earlier results")
    scorers = p.add_argument_group("scorers", "measures besides OCR (docs/scorers.md); each scorer's model is a Hub "
                                              "id or a local save_pretrained folder / file")
    scorers.add_argument("--scorers", nargs="+", choices=[OCR, *scorer_registry.names()], default=list(d["scorers"]),
                         metavar="NAME", help=f"what to score: {OCR} (the paper's OCR, --engine) and any of "
                                              f"{', '.join(scorer_registry.names()) or '(none registered)'}")
    for name in scorer_registry.names():
        scorers.add_argument(f"--{name}-model", dest=model_dest(name), metavar="PATH_OR_ID",
                             help=f"model of the {name} scorer (default: its own, docs/scorers.md)")
    scorers.add_argument("--scorer-device", default=None, help="torch device of the scorers (default: cuda if "
                                                               "available, else cpu)")
    scorers.add_argument("--scorer-batch-size", type=int, default=None, metavar="N",
                         help="images per scorer batch (default: each scorer's own)")
    scorers.add_argument("--scorer-option", action="append", default=[], metavar="NAME.KEY=VALUE",
                         help="a keyword option of a scorer (e.g. vlm-judge.feature=hands; VALUE read as JSON when "
                              "it parses, else as text); may be repeated")
    scorers.add_argument("--reference", type=Path, metavar="DIR",
                         help="reference images of the set-level scorers (fid, kid), compared with each setting")
    scorers.add_argument("--baseline", default=d["baseline"], metavar="METHOD",
                         help="method every other is paired with on the same prompt and seed (paired.csv)")
    scorers.add_argument("--tradeoff", nargs=2, metavar=("X", "Y"),
                         help="draw Y against X with one curve per method across its scales (scorer names, or "
                              "ocr)")
    scorers.add_argument("--scale-param", metavar="KEY",
                         help="the param drawn as the guidance scale (default: each method's own scale)")
    p.set_defaults(out_subdir=d["out_subdir"])
    return p


def _scorer_args(args: argparse.Namespace,
                 parser: argparse.ArgumentParser) -> tuple[list[str], dict[str, str], dict[str, dict]]:
    """The scorers besides OCR, their models and options; flags that would do nothing are errors."""
    names = [name for name in dict.fromkeys(args.scorers) if name != OCR]
    models = {name: getattr(args, model_dest(name)) for name in scorer_registry.names()
              if getattr(args, model_dest(name), None) is not None}
    unused = [name for name in models if name not in names]
    if unused:
        parser.error(f"--{unused[0]}-model is given but {unused[0]} is not in --scorers")
    if OCR not in args.scorers and (args.engine != parser.get_default("engine") or args.gpu is not None):
        parser.error("--engine / --gpu choose the OCR engine: add ocr to --scorers")
    if not names and (args.scorer_device is not None or args.scorer_batch_size is not None):
        parser.error("--scorer-device / --scorer-batch-size go with --scorers other than ocr")
    if args.scorer_batch_size is not None and args.scorer_batch_size < 1:
        parser.error("--scorer-batch-size must be at least 1")
    set_level = []
    for name in names:
        try:
            if issubclass(scorer_registry.scorer_class(name), scorer_registry.SetScorer):
                set_level.append(name)
        except ImportError:
            pass  # reported by the evaluation, which runs the other scorers
    if set_level and args.reference is None:
        parser.error(f"{', '.join(set_level)} compare(s) each setting with reference images: give --reference DIR")
    if args.reference is not None and not set_level:
        parser.error("--reference goes with a set-level scorer (fid, kid) in --scorers")
    options: dict[str, dict] = {}
    for text in args.scorer_option:
        target, equals, value = text.partition("=")
        name, _, key = target.partition(".")
        if not equals or not key.isidentifier():
            parser.error(f"--scorer-option {text!r}: expected NAME.KEY=VALUE (e.g. vlm-judge.feature=hands)")
        if name not in names:
            parser.error(f"--scorer-option {text!r}: {name} is not in --scorers")
        try:
            options.setdefault(name, {})[key] = json.loads(value)
        except json.JSONDecodeError:
            options.setdefault(name, {})[key] = value
    return names, models, options


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser):
    """Score the images and print the summary; returns the ``cslg.evaluation.EvalResult``."""
    if args.images is not None and args.prompts is None:
        parser.error("--images needs --prompts (the generation prompt file the images were made from)")
    if args.run is not None and args.prompts is not None:
        parser.error("--prompts goes with --images; a run folder's manifest already holds the prompts")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    names, models, options = _scorer_args(args, parser)
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
        engines = [get_engine(name, gpu=args.gpu) for name in engine_names(args.engine)] if OCR in args.scorers else None
        result = evaluate(records, base_dir, out_dir, engines, n_bootstrap=args.bootstrap, seed=args.seed,
                          force=args.force, scorers=names, models=models, device=args.scorer_device,
                          batch_size=args.scorer_batch_size, reference=args.reference, baseline=args.baseline,
                          tradeoff=args.tradeoff, scale_param=args.scale_param, options=options)
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(format_summary(result.summary, result.columns, result.set_level))
    n_errors = sum(s["n_errors"] for s in result.summary)
    print(f"\n{len(records)} images, {n_errors} not scored (see the error column); outputs in {out_dir}:")
    for path in result.files.values():
        print(f"  {path}")
    for note in result.notes:
        print(f"note: {note}")
    if result.problems:
        for problem in result.problems:
            print(f"error: {problem}", file=sys.stderr)
        failed = ", ".join(o.name for o in result.scores if o.problem)
        raise SystemExit(f"{len(result.problems)} scorer(s) could not run ({failed}); the others' results are written")
    return result
