"""Step 2: contrastive analysis of capture files -> layer ranking (layers.json) and figures.

    python visualize.py outputs/flux_capture.safetensors --out outputs/flux_analysis
"""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path

from cslg.activations import load_capture
from cslg.analysis import METRICS, layer_change, merge_captures, per_pair_scores, rank_layers
from cslg.io import atomic_write_json
from cslg.plots import plot_layer_change, plot_step_heatmap

OUT = "outputs/analysis"
METRIC = "difference"  # the paper's metric: first difference of the cosine along depth
STEP = "all"  # "all" averages over denoising steps; an int picks one step (-1 = the final step, as upstream)
TOP_K = 3
DPI = 300
YLIM = None  # symmetric y-range of the per-layer figure; upstream used 0.2, None fits the data

YLABELS = {"difference": "change in cosine similarity", "relative": "relative change in cosine similarity"}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="+", help="capture files (.safetensors) of the same model")
    p.add_argument("--out", default=OUT, help="output folder for layers.json and the figures")
    p.add_argument("--metric", choices=METRICS, default=METRIC)
    p.add_argument("--step", default=STEP, help="'all' (mean over steps) or a step index (-1 = last)")
    p.add_argument("--top-k", type=int, default=TOP_K, help="how many layers to suggest")
    p.add_argument("--title", default=None, help="model name for the figure titles (default: from the capture)")
    p.add_argument("--dpi", type=int, default=DPI)
    p.add_argument("--ylim", type=float, default=YLIM, help="symmetric y-range of the per-layer figure")
    args = p.parse_args(argv)
    if args.step != "all":
        try:
            args.step = int(args.step)
        except ValueError:
            p.error(f"--step must be 'all' or an integer, got {args.step!r}")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    return args


def main(argv=None) -> Path:
    args = parse_args(argv)
    captures = [load_capture(path) for path in args.captures]
    cosine = merge_captures(captures)
    names = captures[0].layer_names
    model = args.title or captures[0].model.rstrip("/").split("/")[-1]
    step = None if args.step == "all" else args.step
    scores = per_pair_scores(cosine, args.metric, step)
    ranking = rank_layers(scores, names)
    out = Path(args.out)
    when = "mean over steps" if step is None else f"step {step}"
    figure = plot_layer_change(
        scores, names, f"{model}: {YLABELS[args.metric].capitalize()} per Layer ({when})",
        YLABELS[args.metric], out / f"{model}_{args.metric}_per_layer.png", args.dpi, args.ylim,
    )
    heatmap = plot_step_heatmap(
        layer_change(cosine.double(), args.metric).mean(0), names,
        f"{model}: {YLABELS[args.metric]} per layer and step", out / f"{model}_{args.metric}_heatmap.png",
    )
    k = min(args.top_k, len(names))
    layers_json = atomic_write_json(out / "layers.json", {
        "model": captures[0].model,
        "family": captures[0].metadata["family"],
        "captures": [str(c.path) for c in captures],
        "pairs": int(cosine.shape[0]),
        "metric": args.metric,
        "step": args.step,
        "top_k": k,
        "suggested": ranking.top(k),
        "ranking": ranking.as_rows(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    })
    print(f"top-{k} layers ({args.metric}, {when}): {', '.join(ranking.top(k))}")
    print(f"wrote {layers_json}\n      {figure}\n      {heatmap}")
    return layers_json


if __name__ == "__main__":
    main()
