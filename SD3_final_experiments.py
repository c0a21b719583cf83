"""Step 3 (Stable Diffusion 3 / 3.5): generate the comparison grid none / CFG / SLG / CSLG (and the
baselines S-CFG and ConceptDiffusion) into a run folder that eval.py scores.

    python SD3_final_experiments.py --layers-from outputs/analysis/layers.json --top-k 2 --out outputs/sd3_run
"""

from cslg.cli import grid, command_parser

MODEL = "stabilityai/stable-diffusion-3-medium-diffusers"
PROMPTS = "prompt_datasets/text_eval_prompts.json"
OUT = "outputs/sd3_run"
SEEDS = [0, 42, 123, 456, 789]
STEPS = 28
HEIGHT = 1024
WIDTH = 1024
MAX_SEQUENCE_LENGTH = 256
METHODS = ["none", "cfg", "slg", "cslg"]
CFG_SCALES = [7.0]
CSLG_SCALES = [2.8]
LAYERS = [9, 12]  # what upstream skipped (diffusers indices); its capture's offset-by-5 ranks meant blocks 14, 17
LAYER_COMBINATIONS = "all"  # [9], [12], [9, 12] as upstream
TOP_K = 2
CSLG_START = 0.01  # the window upstream used with diffusers' SLG
CSLG_STOP = 0.2
NEGATIVE_PROMPT = ""


def main(argv=None):
    parser = command_parser(
        __doc__, grid, model=MODEL, prompts=PROMPTS, out=OUT, seeds=SEEDS, steps=STEPS, height=HEIGHT, width=WIDTH,
        max_sequence_length=MAX_SEQUENCE_LENGTH, methods=METHODS, cfg_scales=CFG_SCALES, cslg_scales=CSLG_SCALES,
        top_k=TOP_K, layer_combinations=LAYER_COMBINATIONS, cslg_start=CSLG_START, cslg_stop=CSLG_STOP,
        guidance=None, guidance_help="SD3's guidance_scale (= CFG scale, shorthand for --cfg-scales G)",
        negative_prompt=NEGATIVE_PROMPT,
    )
    return grid.run(parser.parse_args(argv), parser, family="sd3", default_layers=LAYERS)


if __name__ == "__main__":
    main()
