"""Step 2: contrastive analysis of capture files -> layer ranking (layers.json) and figures.

    python visualize.py outputs/flux_capture.safetensors --out outputs/flux_analysis

Captures of several finders (or layers.json files) over the same pairs are each ranked and compared
(agreement.json, agreement.png: rank correlations, top-k overlap, the per-block scores side by side):

    python visualize.py outputs/flux_contrast.safetensors outputs/flux_ablation.safetensors --out outputs/flux_compare
"""

from __future__ import annotations

from cslg.cli import analyse, command_parser

OUT = "outputs/analysis"
METRIC = "difference"  # the paper's metric: first difference of the cosine along depth
BASELINE = "input"  # s_{-1}: similarity of the tokens entering block 0; "one" as the paper (all drift charged to block 0)
STEP = "all"  # "all" averages over denoising steps; an int picks one step (-1 = the final step, as upstream)
TOP_K = 3
DPI = 300
YLIM = None  # symmetric y-range of the per-layer figure; upstream used 0.2, None fits the data


def main(argv=None):
    parser = command_parser(__doc__, analyse, out=OUT, metric=METRIC, baseline=BASELINE, step=STEP, top_k=TOP_K,
                            dpi=DPI, ylim=YLIM)
    return analyse.run(parser.parse_args(argv), parser)


if __name__ == "__main__":
    main()
