"""The ``cslg`` command: ``cslg capture | analyse | grid | eval | inspect``, for every supported family (taken
from the loaded model). The upstream-named scripts are the same commands with the paper's constants."""

from __future__ import annotations

import sys

from .cli import (
    analyse_parser, capture_parser, check_eval_args, eval_parser, grid_parser, run_analyse_command,
    run_capture_command, run_eval_command, run_grid_command,
)

USAGE = """usage: cslg {capture,analyse,grid,eval,inspect} [flags]   (cslg COMMAND --help for its flags)

  capture   step 1: cosine similarity of prompt pairs per block and step -> .safetensors
  analyse   step 2: rank the blocks -> layers.json and figures
  grid      step 3: images of none / cfg / slg / cslg / scfg / concept -> run folder
  eval      step 4: OCR scores of a run folder
  inspect   what a capture file holds
"""

IMAGE = {"steps": 28, "height": 1024, "width": 1024, "max_sequence_length": 256}


def capture(argv: list[str]):
    args = capture_parser(
        "Capture the cosine similarity of each prompt pair's image tokens after every block, at every step.",
        model=None, prompts="prompt_datasets/prompts_text_notext.json", pairs=100, seed=0, **IMAGE,
        guidance=None, guidance_help="distilled guidance embedding where the model has one, else the CFG scale",
        trajectory="independent", out="outputs/capture.safetensors",
    ).parse_args(argv)
    return run_capture_command(args)


def analyse(argv: list[str]):
    return run_analyse_command(analyse_parser("Rank the blocks of capture files.", "outputs/analysis", "difference",
                                              "all", 3, 300, None), argv)


def grid(argv: list[str]):
    args = grid_parser(
        "Generate a grid of guidance methods into a run folder.",
        model=None, prompts="prompt_datasets/text_eval_prompts.json", out="outputs/run", seeds=[0], **IMAGE,
        methods=["none", "cfg", "cslg"], cfg_scales=[1.0], cslg_scales=[1.0], top_k=1, layer_combinations="given",
        cslg_start=0.0, cslg_stop=1.0, guidance=None,
        guidance_help="distilled guidance embedding where the model has one, else the CFG scale", negative_prompt="",
    ).parse_args(argv)
    return run_grid_command(args)


def evaluate(argv: list[str]):
    parser = eval_parser("Score a run folder with OCR.", "easyocr", 1000, 0, "eval")
    return run_eval_command(check_eval_args(parser, parser.parse_args(argv)))


def inspect(argv: list[str]):
    from .inspect import main as inspect_main

    return inspect_main(argv)


COMMANDS = {"capture": capture, "analyse": analyse, "grid": grid, "eval": evaluate, "inspect": inspect}


def main(argv: list[str] | None = None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return None
    if argv[0] not in COMMANDS:
        raise SystemExit(f"cslg: unknown command {argv[0]!r}\n{USAGE}")
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    main()
