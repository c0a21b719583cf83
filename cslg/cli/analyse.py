"""``cslg analyse`` and ``visualize.py``: step 2, rank the blocks of capture files into ``layers.json`` and figures.
Captures of one finder are pooled into one ranking; captures of several finders, or ``layers.json`` files, are each
ranked and compared (``cslg.analysis.agreement``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..options import BASELINES, CAUSAL_SCORES, CHANGE_METRICS, DEFAULT_SCORES
from .common import one_line_errors

DEFAULTS = dict(out="outputs/analysis", metric="difference", baseline="input", step="all", top_k=3, dpi=300,
                ylim=None)


def configure(p: argparse.ArgumentParser, **overrides) -> argparse.ArgumentParser:
    """The flags of step 2; ``overrides`` are a script's constants (keys of ``DEFAULTS``)."""
    d = {**DEFAULTS, **overrides}
    p.add_argument("captures", nargs="+", metavar="INPUT",
                   help="capture files (.safetensors) of the same model: those of one finder are pooled into one "
                        "ranking; with several finders or layers.json files, every ranking is compared to the others "
                        "(agreement.json, agreement.png)")
    p.add_argument("--out", default=d["out"], help="output folder for layers.json and the figures")
    p.add_argument("--metric", choices=CHANGE_METRICS, default=d["metric"],
                   help="difference: s_l - s_{l-1} (the paper); relative: (s_l - s_{l-1}) / s_{l-1}")
    p.add_argument("--baseline", choices=BASELINES, default=d["baseline"],
                   help="s_{-1} of the first block: 'input', the similarity of the image tokens entering it (the drift "
                        "of the two trajectories is not charged to block 0), or 'one' (the paper)")
    p.add_argument("--score", choices=CAUSAL_SCORES, default=None,
                   help="ranking score of ablation / patching captures: distance ‖n - p_l‖ or cosine cos(n, p_l), "
                        "raw, -ratio or -difference to the unperturbed reference, -drop: change along depth "
                        f"(default: ablation {DEFAULT_SCORES['ablation']}, patching {DEFAULT_SCORES['patching']}; "
                        "contrast captures rank by --metric / --baseline)")
    p.add_argument("--step", default=d["step"], help="'all' (mean over steps) or a step index (-1 = last)")
    p.add_argument("--top-k", type=int, default=d["top_k"], help="how many layers to suggest (and to compare)")
    p.add_argument("--title", default=None, help="model name for the figure titles (default: from the capture)")
    p.add_argument("--dpi", type=int, default=d["dpi"], help="resolution of the figures")
    p.add_argument("--ylim", type=float, default=d["ylim"], help="symmetric y-range of the per-layer figure")
    p.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: upstream's analysis (--metric difference --baseline one --step -1)")
    return p


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> Path:
    """Rank the layers of the captures and write layers.json and the figures; returns the layers.json path."""
    from ..analysis import analyse
    from ..analysis.agreement import compare_inputs, describe_pair, group_inputs
    from ..capture import load_capture

    if args.preset == "paper":
        args.metric, args.baseline, args.step = "difference", "one", "-1"
    step = None
    if args.step != "all":
        try:
            step = int(args.step)
        except ValueError:
            parser.error(f"--step must be 'all' or an integer, got {args.step!r}")
    if args.top_k < 1:
        parser.error("--top-k must be at least 1")
    if args.dpi < 1:
        parser.error("--dpi must be at least 1")
    if args.ylim is not None and not 0 < args.ylim < float("inf"):
        parser.error(f"--ylim must be a positive finite number, got {args.ylim}")
    try:
        inputs = group_inputs(args.captures)
        if len(inputs) == 1 and inputs[0].layers_json is not None:
            raise ValueError(f"{inputs[0].paths[0]}: one ranking, nothing to compare: give its captures or more "
                             "rankings")
        if len(inputs) > 1:
            result = compare_inputs(inputs, args.out, args.top_k, args.dpi, args.title, metric=args.metric, step=step,
                                    ylim=args.ylim, baseline=args.baseline)
            lines = [describe_pair(pair) for pair in result["pairs"]] + [f"note: {n}" for n in result["notes"]]
            print("\n".join(lines))
            print(f"wrote {result['path']}\n      " + "\n      ".join([result["figure"], *result["rankings_written"]]))
            return Path(result["path"])
        result = analyse([load_capture(path) for path in args.captures], args.out, args.metric, step, args.top_k,
                         args.title, args.dpi, args.ylim, args.baseline, getattr(args, "score", None))
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    when = "mean over steps" if step is None else f"step {step}"
    how = f"{args.metric}, {when}, baseline {args.baseline}" if result["finder"] == "contrast" else \
        f"{result['finder']} finder, {result['score']}, {when}"
    print(f"top-{result['top_k']} layers ({how}): {', '.join(result['suggested'])}")
    print(f"wrote {result['path']}\n      " + "\n      ".join(result["figures"]))
    return Path(result["path"])
