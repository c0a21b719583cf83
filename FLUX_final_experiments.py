"""Step 3 (FLUX.1): generate the comparison grid none / CFG / CSLG (and SLG, S-CFG, ConceptDiffusion)
into a run folder that eval.py scores.

CFG on FLUX is true CFG with the negative prompt (FLUX.1-dev's own "guidance" is a distilled embedding,
--guidance). With w = 1, CSLG is v = c + s (c - c_skip); upstream's FLUX "scale 2.0" is s = 1.0 here.

    python FLUX_final_experiments.py --layers-from outputs/analysis/layers.json --top-k 1 --out outputs/flux_run

Upstream's variants of the top-5 layers side by side (single, joint, uniform and weighted means; weights from the
ranking's scores, docs/finder-comparison.md):

    python FLUX_final_experiments.py --layer-weights-from outputs/analysis/layers.json --top-k 5 --out outputs/flux_msg
"""

from cslg.cli import grid, command_parser

MODEL = "black-forest-labs/FLUX.1-dev"
PROMPTS = "prompt_datasets/text_eval_prompts.json"
OUT = "outputs/flux_run"
SEEDS = list(range(10))
STEPS = 28
HEIGHT = 1024
WIDTH = 1024
MAX_SEQUENCE_LENGTH = 512
METHODS = ["none", "cslg"]
CFG_SCALES = [1.0]  # true CFG scale w; 1 = no negative-prompt pass (upstream CSLG on FLUX)
CSLG_SCALES = [1.0]  # = upstream FLUX scale 2.0
LAYERS = [5]  # the paper's FLUX.1-dev text layer
LAYER_COMBINATIONS = "given"
TOP_K = 1
CSLG_START = 0.0
CSLG_STOP = 1.0
GUIDANCE = 3.5  # distilled guidance embedding (upstream ran CSLG with 0.0: pass --guidance 0 to match)
NEGATIVE_PROMPT = ""


def main(argv=None):
    parser = command_parser(
        __doc__, grid, model=MODEL, prompts=PROMPTS, out=OUT, seeds=SEEDS, steps=STEPS, height=HEIGHT, width=WIDTH,
        max_sequence_length=MAX_SEQUENCE_LENGTH, methods=METHODS, cfg_scales=CFG_SCALES, cslg_scales=CSLG_SCALES,
        top_k=TOP_K, layer_combinations=LAYER_COMBINATIONS, cslg_start=CSLG_START, cslg_stop=CSLG_STOP,
        guidance=GUIDANCE, guidance_help="distilled guidance embedding of FLUX.1-dev", negative_prompt=NEGATIVE_PROMPT,
    )
    return grid.run(parser.parse_args(argv), parser, family="flux", default_layers=LAYERS)


if __name__ == "__main__":
    main()
