"""Step 1 (FLUX.1): capture, for every prompt pair, the cosine similarity between the two prompts'
image-token outputs of every block (double- and single-stream) at every denoising step.

    python FLUX_LayerExperiment_pairwise.py --model black-forest-labs/FLUX.1-dev --out outputs/flux_capture.safetensors

--finder ablation / patching captures the causal finders instead (docs/finders.md).
"""

from cslg.cli import capture, command_parser

MODEL = "black-forest-labs/FLUX.1-dev"
PROMPTS = "prompt_datasets/prompts_text_notext.json"
PAIRS = 100
STEPS = 28
SEED = 0
HEIGHT = 1024
WIDTH = 1024
GUIDANCE = 3.5  # FLUX.1-dev's distilled guidance embedding (not CFG)
MAX_SEQUENCE_LENGTH = 256
TRAJECTORY = "independent"  # contrast only: ablation and patching follow the negative prompt's trajectory
FINDER = "contrast"  # contrast (the README's cosine), ablation (upstream's skip search) or patching
OUT = "outputs/flux_capture.safetensors"


def main(argv=None):
    parser = command_parser(
        __doc__, capture, model=MODEL, prompts=PROMPTS, pairs=PAIRS, steps=STEPS, seed=SEED, height=HEIGHT,
        width=WIDTH, guidance=GUIDANCE, guidance_help="distilled guidance embedding",
        max_sequence_length=MAX_SEQUENCE_LENGTH, trajectory=TRAJECTORY, finder=FINDER, out=OUT,
    )
    return capture.run(parser.parse_args(argv), parser, family="flux")


if __name__ == "__main__":
    main()
