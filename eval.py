"""Step 4: OCR evaluation of generated images.

    python eval.py --run outputs/sd3_text                   # a run folder from step 3 (manifest.jsonl)
    python eval.py --images DIR --prompts prompt_datasets/text_eval_prompts.json --out DIR/eval

The expected text of an image is the manifest's/prompt file's ``expected_text``, or else the
quoted strings of its prompt. Each image is read with easyocr (offline weights) and scored
with the paper's OCR similarity (difflib ratio) plus NED, word precision/recall/F1 and exact
match; results go to ``<out>/`` (default ``<run or images>/eval``): per_image.csv,
summary.csv (means with 95% bootstrap CIs per method and setting), per_prompt.csv,
methods_bar.png and, for cfg_scale x cslg_scale sweeps, heatmap_cfg_x_cslg.png.
Re-running resumes: images already read are not OCRed again unless --force.

With --images, an image maps to a prompt of --prompts when its path below DIR (without
extension) contains prompt_slug(prompt), or else when its file name starts with the 0-based
prompt index followed by '_' or nothing (0003_cslg.png, 12.png). Sub-folders (other than
slug-named ones) name the method, 'seed<N>' in a file name gives the seed. An image that maps
to nothing is an error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from cslg.evaluation import EvalResult, evaluate, format_summary, load_manifest, records_from_images
from cslg.ocr import ENGINES, get_engine

ENGINE = "easyocr"
N_BOOTSTRAP = 1000  # bootstrap resamples for the 95% confidence intervals
BOOTSTRAP_SEED = 0
OUT_SUBDIR = "eval"  # default output folder inside the run / images folder


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="DIR", help="run folder with manifest.jsonl and the images")
    source.add_argument("--images", type=Path, metavar="DIR", help="plain folder of images (needs --prompts)")
    parser.add_argument("--prompts", type=Path, metavar="FILE", help="generation prompt file for --images")
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (default: <run|images>/{OUT_SUBDIR})")
    parser.add_argument("--engine", choices=sorted(ENGINES), default=ENGINE, help="OCR engine")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="run OCR on the GPU (default: when CUDA is available)")
    parser.add_argument("--bootstrap", type=int, default=N_BOOTSTRAP, metavar="N",
                        help="bootstrap resamples (0: no CIs)")
    parser.add_argument("--seed", type=int, default=BOOTSTRAP_SEED, help="bootstrap seed")
    parser.add_argument("--force", action="store_true", help="OCR every image again, ignoring earlier results")
    args = parser.parse_args(argv)
    if args.images is not None and args.prompts is None:
        parser.error("--images needs --prompts (the generation prompt file the images were made from)")
    if args.run is not None and args.prompts is not None:
        parser.error("--prompts goes with --images; a run folder's manifest already holds the prompts")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    return args


def main(argv: list[str] | None = None) -> EvalResult:
    args = parse_args(argv)
    base_dir = args.run if args.run is not None else args.images
    out_dir = args.out if args.out is not None else base_dir / OUT_SUBDIR
    try:  # bad inputs end with their message, not a traceback
        if args.run is not None:
            records = load_manifest(args.run)
        else:
            records = records_from_images(args.images, args.prompts, exclude=[out_dir])
        engine = get_engine(args.engine, gpu=args.gpu)
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise SystemExit(f"eval.py: error: {e}") from None
    result = evaluate(records, base_dir, out_dir, engine, n_bootstrap=args.bootstrap, seed=args.seed, force=args.force)

    print(format_summary(result.summary))
    n_errors = sum(s["n_errors"] for s in result.summary)
    print(f"\n{len(records)} images, {n_errors} not scored (see the error column); outputs in {out_dir}:")
    for path in result.files.values():
        print(f"  {path}")
    return result


if __name__ == "__main__":
    main()
