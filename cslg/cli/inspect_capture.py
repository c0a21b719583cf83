"""``cslg inspect FILE``: what a capture file holds (tensors, metadata, top layers)."""

from __future__ import annotations

import argparse

from .common import one_line_errors

LONG_KEYS = ("prompts", "timesteps", "layer_names", "block_groups")


def configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("file", help="capture file (.safetensors)")
    p.add_argument("--top-k", type=int, default=5, help="how many top layers to show")
    return p


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> None:
    from ..analysis import rank_captures
    from ..capture import load_capture

    if args.top_k < 1:
        parser.error(f"--top-k must be at least 1, got {args.top_k}")
    try:
        cap = load_capture(args.file)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"{cap.path}")
    print("tensors:")
    print(f"  cosine             {tuple(cap.cosine.shape)} {cap.cosine.dtype}  [pairs, steps, layers]")
    for name in ("distance", "reference_distance", "reference_cosine"):
        t = getattr(cap, name)
        if t is not None:
            print(f"  {name:<18} {tuple(t.shape)} {t.dtype}  [pairs, steps{', layers' if t.ndim == 3 else ''}]")
    if cap.input_cosine is not None:
        print(f"  input_cosine       {tuple(cap.input_cosine.shape)} {cap.input_cosine.dtype}  [pairs, steps]")
    for name, t in cap.activations.items():
        print(f"  activations.{name:<6} {tuple(t.shape)} {t.dtype}  [pairs, saved steps, 2 prompts, tokens, dim]")
    if cap.activation_steps is not None:
        print(f"  activation_steps   {cap.activation_steps.tolist()}")
    print("metadata:")
    for key in sorted(cap.metadata):
        value = cap.metadata[key]
        if key in LONG_KEYS:
            value = f"{len(value)} entries: {value[:3]}{' ...' if len(value) > 3 else ''}"
        print(f"  {key}: {value}")
    baseline = "input" if cap.input_cosine is not None else "one"
    ranking, score = rank_captures([cap], baseline=baseline)
    how = f"first difference, mean over steps, baseline {baseline}" if cap.finder == "contrast" else \
        f"{cap.finder} finder, {score}, mean over steps"
    print(f"top layers ({how}): {', '.join(ranking.top(args.top_k))}")
