"""Step 2: contrastive analysis of capture files -> layer ranking (layers.json) and figures.

    python visualize.py outputs/flux_capture.safetensors --out outputs/flux_analysis
"""

from __future__ import annotations

from cslg.cli import analyse_parser, run_analyse_command

OUT = "outputs/analysis"
METRIC = "difference"  # the paper's metric: first difference of the cosine along depth
BASELINE = "input"  # s_{-1}: similarity of the tokens entering block 0; "one" as the paper (all drift charged to block 0)
STEP = "all"  # "all" averages over denoising steps; an int picks one step (-1 = the final step, as upstream)
TOP_K = 3
DPI = 300
YLIM = None  # symmetric y-range of the per-layer figure; upstream used 0.2, None fits the data


def main(argv=None):
    return run_analyse_command(analyse_parser(__doc__, OUT, METRIC, STEP, TOP_K, DPI, YLIM, BASELINE), argv)


if __name__ == "__main__":
    main()
