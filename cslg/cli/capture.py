"""``cslg capture`` and the LayerExperiment scripts: step 1, per block and step, the cosine similarity of prompt pairs
(``--finder contrast``) or what skipping / patching the block does to the positive prompt's prediction (``ablation``,
``patching``), into a capture file."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..options import COMPARED, FINDERS, SITES, TRAJECTORIES
from ..prompts import load_pairs
from .common import (
    add_image_args,
    add_model_args,
    check_loaded,
    check_numbers,
    check_seeds,
    int_list,
    load_from_args,
    one_line_errors,
    prompts_from_args,
    require_positive,
    writable,
)

DEFAULTS = dict(model=None, prompts="prompt_datasets/prompts_text_notext.json", pairs=100, seed=0, steps=28,
                height=1024, width=1024, max_sequence_length=256, guidance=None, trajectory="independent",
                out="outputs/capture.safetensors",
                guidance_help="distilled guidance embedding where the model has one, else the CFG scale")


def configure(p: argparse.ArgumentParser, **overrides) -> argparse.ArgumentParser:
    """The flags of step 1; ``overrides`` are a script's constants (keys of ``DEFAULTS``)."""
    d = {**DEFAULTS, **overrides}
    add_model_args(p, d["model"])
    p.add_argument("--prompts", default=d["prompts"], help="JSON pair file (no_text/with_text or negative/positive)")
    p.add_argument("--pairs", type=int, default=d["pairs"], help="use the first N pairs")
    add_image_args(p, d, "denoising steps (fixed for every pair)")
    p.add_argument("--seed", type=int, default=d["seed"], help="noise seed, the same for both prompts of a pair")
    p.add_argument("--guidance", type=float, default=d["guidance"], help=d["guidance_help"])
    p.add_argument("--finder", choices=FINDERS, default=d.get("finder", "contrast"),
                   help="contrast: cosine of the two prompts' activations per block; ablation: each block skipped in "
                        "the positive prompt's pass along the negative prompt's trajectory (upstream's search); "
                        "patching: each block's image-token output taken from the negative prompt's pass")
    p.add_argument("--max-lanes", type=int, default=None,
                   help="ablation / patching: at most this many passes in one forward (default: from the free GPU "
                        "memory; no cap on CPU)")
    p.add_argument("--trajectory", choices=TRAJECTORIES, default=None,
                   help=f"contrast: independent, each prompt its own trajectory from the same noise (paper); shared, "
                        f"both prompts on the first prompt's trajectory (default: {d['trajectory']}; ablation and "
                        "patching: shared, the only one they take)")
    p.set_defaults(default_trajectory=d["trajectory"])
    p.add_argument("--site", choices=SITES, default=d.get("site", "block"),
                   help="block: each block's image-token output (residual stream); attn: its image-token attention "
                        "output before gating and residual (the paper's measurement point)")
    p.add_argument("--compare", "--rows", choices=COMPARED, default="cond", dest="compare",
                   help="with CFG: compare the conditional passes (cond) or average over [uncond, cond] (all, upstream)")
    p.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: upstream's computation (--site attn --compare all --trajectory independent); analyse "
                        "the file with visualize.py --preset paper")
    p.add_argument("--save-activations", default="", metavar="LAYERS",
                   help="also save raw image-token outputs of these layers, e.g. '5,s12'")
    p.add_argument("--save-steps", type=int_list, default=[-1],
                   help="steps at which --save-activations saves (negative counts from the end; default: last)")
    p.add_argument("--out", default=d["out"], help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="capture again even if --out already holds this capture")
    return p


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser, family: str | None = None) -> Path:
    """Validate the flags, load the model and pairs, capture, and print where the file is."""
    from ..capture import CaptureConfig, resolve_steps, run_capture
    from ..io import LockedError
    from ..capture.finders import check_finder_settings
    from ..families import LayerError, adapter_for

    require_positive(args, "pairs", "steps", "height", "width", "max_sequence_length")
    check_numbers(args, {"guidance": (0, None)})
    if args.max_lanes is not None and args.max_lanes < 2:
        raise SystemExit(f"--max-lanes must be at least 2, got {args.max_lanes}")
    if args.preset == "paper":
        if args.finder != "contrast":
            raise SystemExit(f"--preset paper: upstream's contrastive capture; it does not apply to "
                             f"--finder {args.finder}")
        args.site, args.compare, args.trajectory = "attn", "all", "independent"
    if args.trajectory is None:
        args.trajectory = getattr(args, "default_trajectory", "independent") if args.finder == "contrast" else "shared"
    try:
        check_finder_settings(args.finder, args.trajectory, args.site, args.compare, args.save_activations.strip())
    except ValueError as e:
        raise SystemExit(str(e)) from None
    check_seeds([args.seed], "--seed")
    pairs = prompts_from_args(load_pairs, args, args.pairs)
    out = Path(args.out)
    if out.is_dir():
        raise SystemExit(f"--out {out} is a directory: give a .safetensors file name")
    writable(out.parent)
    pipe = load_from_args(args, family)
    adapter = adapter_for(pipe, guidance=args.guidance)
    check_loaded(adapter, args)
    try:
        save_layers = adapter.resolve_layers(args.save_activations)
    except LayerError as e:
        raise SystemExit(f"--save-activations: {e}") from None
    if not save_layers and args.save_steps != [-1]:
        raise SystemExit("error: --save-steps: only used with --save-activations (which layers to save)")
    try:
        save_steps = resolve_steps(args.save_steps, args.steps) if save_layers else ()
    except ValueError as e:
        raise SystemExit(str(e)) from None
    config = CaptureConfig(
        model=args.model, prompts_file=str(args.prompts), pairs=len(pairs), steps=args.steps, seed=args.seed,
        height=args.height, width=args.width, guidance=args.guidance, max_sequence_length=args.max_sequence_length,
        trajectory=args.trajectory, site=args.site, compare=args.compare, save_layers=tuple(save_layers),
        save_steps=save_steps, finder=args.finder,
    )
    start = time.perf_counter()
    try:
        out = run_capture(adapter, pairs, config, args.out, force=args.force, max_lanes=args.max_lanes)
    except (ValueError, LockedError) as e:
        raise SystemExit(f"error: {e}") from None
    print(f"captured ({args.finder}) {len(pairs)} pairs x {args.steps} steps x {len(adapter.blocks)} layers "
          f"in {time.perf_counter() - start:.1f}s -> {out}")
    print(f"inspect with: cslg inspect {out}")
    return out
