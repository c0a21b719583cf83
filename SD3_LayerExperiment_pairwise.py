"""Step 1 (Stable Diffusion 3 / 3.5): capture, for every prompt pair, the cosine similarity between the
two prompts' image-token outputs of every joint block at every denoising step (conditional rows of CFG).

    python SD3_LayerExperiment_pairwise.py --model stabilityai/stable-diffusion-3-medium-diffusers

--finder ablation / patching captures the causal finders instead (docs/finders.md).
"""

from cslg.cli import capture, command_parser

MODEL = "stabilityai/stable-diffusion-3-medium-diffusers"
PROMPTS = "prompt_datasets/prompts_text_notext.json"
PAIRS = 100
STEPS = 28
SEED = 0
HEIGHT = 1024
WIDTH = 1024
GUIDANCE = 7.0  # CFG scale (CFG runs when > 1)
MAX_SEQUENCE_LENGTH = 256
TRAJECTORY = "independent"  # contrast only: ablation and patching follow the negative prompt's trajectory
FINDER = "contrast"  # contrast (the README's cosine), ablation (upstream's skip search) or patching
OUT = "outputs/sd3_capture.safetensors"


def main(argv=None):
    parser = command_parser(
        __doc__, capture, model=MODEL, prompts=PROMPTS, pairs=PAIRS, steps=STEPS, seed=SEED, height=HEIGHT,
        width=WIDTH, guidance=GUIDANCE, guidance_help="CFG scale", max_sequence_length=MAX_SEQUENCE_LENGTH,
        trajectory=TRAJECTORY, finder=FINDER, out=OUT,
    )
    return capture.run(parser.parse_args(argv), parser, family="sd3")


if __name__ == "__main__":
    main()
