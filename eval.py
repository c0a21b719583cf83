"""Step 4: evaluation of generated images: OCR (the paper's) and the scorers of cslg.scorers.

    python eval.py --run outputs/sd3_text                   # a run folder from step 3 (manifest.jsonl)
    python eval.py --images DIR --prompts prompt_datasets/text_eval_prompts.json --out DIR/eval
    python eval.py --run outputs/sd3_hands --scorers clip hands --clip-model /models/clip-vit-large-patch14 \
        --tradeoff clip hands                               # any registered scorers (docs/scorers.md)

The expected text of an image is the manifest's/prompt file's ``expected_text``, or else the
quoted strings of its prompt. Each image is read with easyocr (default) or PP-OCR
(--engine ppocr; --engine all: both, plus their agreement in agreement.csv), offline weights,
and scored with the paper's OCR similarity (difflib ratio) plus AnyText's NED, MARIO-Eval's
word precision/recall/F-measure and accuracy, and GlyphControl's exact match; results go to
``<out>/`` (default ``<run or images>/eval``): per_image.csv, summary.csv (means with 95%
bootstrap CIs per engine, method and setting), per_prompt.csv, methods_bar.png and, for
cfg_scale x cslg_scale sweeps, heatmap_cfg_x_cslg.png.
Re-running resumes: images already read are not OCRed again unless --force.

--scorers ocr clip ... adds the scorers' columns to per_image.csv and their means with 95% CIs to
summary.csv (each scorer's model: --<scorer>-model, a Hub id or local folder; scores are cached in
<out>/scores/ per image, content hash and model, so adding a scorer scores only it); paired.csv
compares every method with --baseline (default cfg) on the same prompt and seed (win rate, mean
paired difference, bootstrap CIs); scale_<measure>.png draws each measure against the guidance
scale, --tradeoff X Y one measure against another across the scales. Set-level scorers (fid, kid)
compare each setting's images with --reference DIR. A scorer whose model is missing prints one
line, the others still run, and the exit status is 1.

With --images, an image maps to a prompt of --prompts when its path below DIR (without
extension) contains prompt_slug(prompt), or else when its file name starts with the 0-based
prompt index followed by '_' or nothing (0003_cslg.png, 12.png). Sub-folders (other than
slug-named ones) name the method, 'seed<N>' in a file name gives the seed. An image that maps
to nothing is an error.
"""

from __future__ import annotations

from cslg.cli import command_parser
from cslg.cli import eval as evaluation

ENGINE = "easyocr"
N_BOOTSTRAP = 1000  # bootstrap resamples for the 95% confidence intervals
BOOTSTRAP_SEED = 0
OUT_SUBDIR = "eval"  # default output folder inside the run / images folder


def main(argv: list[str] | None = None):
    parser = command_parser(__doc__, evaluation, engine=ENGINE, bootstrap=N_BOOTSTRAP, seed=BOOTSTRAP_SEED,
                            out_subdir=OUT_SUBDIR)
    return evaluation.run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()
