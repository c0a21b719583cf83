"""Command-line plumbing of the scripts and the ``cslg`` command (the scripts keep their own constants).

Parsers need only ``cslg.options``; torch, diffusers and the rest load when a command runs, so ``--help`` is quick.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
import warnings
from pathlib import Path
from typing import Sequence

from .options import (
    ALL_ENGINES, BASELINES, DTYPE_NAMES, ENGINE_NAMES, LAYER_COMBINATIONS, METHOD_NAMES, METRICS, OFFLOAD_MODES, ROWS,
    SITES, SLG_LAYERS, SLG_START, SLG_STOP, TINY_PRESETS, TRAJECTORIES,
)
from .prompts import PromptFileError, load_generation_prompts, load_pairs


def _number_list(text: str, cast: type, kind: str) -> list:
    try:
        return [cast(tok) for tok in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {kind} separated by commas or spaces, got {text!r}") from None


def int_list(text: str) -> list[int]:
    """``"0,42 123"`` -> ``[0, 42, 123]`` (argparse type)."""
    return _number_list(text, int, "integers")


def float_list(text: str) -> list[float]:
    """``"5,7.5 9"`` -> ``[5.0, 7.5, 9.0]`` (argparse type)."""
    return _number_list(text, float, "numbers")


def add_model_args(p: argparse.ArgumentParser, model: str) -> None:
    p.add_argument("--model", default=model, required=model is None,
                   help=f"diffusers id, local save_pretrained folder, or a tiny preset ({', '.join(TINY_PRESETS)})")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none", help="model / sequential CPU offload (GPU only)")


def add_image_args(p: argparse.ArgumentParser, d: dict, steps_help: str | None = None) -> None:
    p.add_argument("--steps", type=int, default=d["steps"], help=steps_help)
    p.add_argument("--height", type=int, default=d["height"])
    p.add_argument("--width", type=int, default=d["width"])
    p.add_argument("--max-sequence-length", type=int, default=d["max_sequence_length"])


def require_positive(args: argparse.Namespace, *flags: str) -> None:
    """Exit with a message naming the first of ``flags`` (argparse dests) that is below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")




def parse_layer_list(text: str | Sequence[str]) -> list[str]:
    """Split a CLI value like ``"3,8 S12"`` or ``["3", "8,s12"]`` into lowercase layer tokens (validated against
    the model by ``Adapter.resolve_layers``)."""
    parts = [text] if isinstance(text, str) else list(text)
    return [tok.lower() for part in parts for tok in part.replace(",", " ").split()]


def load_from_args(args: argparse.Namespace, family: str | None):
    try:
        import torch

        from .models import load_pipeline

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
        return load_pipeline(args.model, family, args.device, dtype, args.offload)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def prompts_from_args(loader, args: argparse.Namespace, limit: int | None):
    try:
        return loader(args.prompts, limit=limit)
    except PromptFileError as e:
        raise SystemExit(f"--prompts: {e}") from None


def capture_parser(doc: str, **defaults) -> argparse.ArgumentParser:
    """Flags of the LayerExperiment scripts; ``defaults`` are the script's constants."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, defaults["model"])
    p.add_argument("--prompts", default=defaults["prompts"], help="JSON pair file (no_text/with_text or negative/positive)")
    p.add_argument("--pairs", type=int, default=defaults["pairs"], help="use the first N pairs")
    add_image_args(p, defaults, "denoising steps (fixed for every pair)")
    p.add_argument("--seed", type=int, default=defaults["seed"], help="noise seed, the same for both prompts of a pair")
    p.add_argument("--guidance", type=float, default=defaults["guidance"], help=defaults["guidance_help"])
    p.add_argument("--trajectory", choices=TRAJECTORIES, default=defaults["trajectory"],
                   help="independent: each prompt its own trajectory from the same noise (paper); "
                        "shared: both prompts on the first prompt's trajectory")
    p.add_argument("--site", choices=SITES, default=defaults.get("site", "block"),
                   help="block: each block's image-token output (residual stream); attn: its image-token attention "
                        "output before gating and residual (the paper's measurement point)")
    p.add_argument("--rows", choices=ROWS, default="cond",
                   help="with CFG: compare the conditional rows (cond) or average over [uncond, cond] (all, upstream)")
    p.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: upstream's computation (--site attn --rows all --trajectory independent); analyse the "
                        "file with visualize.py --preset paper")
    p.add_argument("--save-activations", default="", metavar="LAYERS",
                   help="also save raw image-token outputs of these layers, e.g. '5,s12'")
    p.add_argument("--save-steps", type=int_list, default=[-1],
                   help="steps at which --save-activations saves (negative counts from the end; default: last)")
    p.add_argument("--out", default=defaults["out"], help="output .safetensors file")
    p.add_argument("--force", action="store_true", help="capture again even if --out already holds this capture")
    return p


def run_capture_command(args: argparse.Namespace, family: str | None = None) -> Path:
    """Validate the flags, load the model and pairs, capture, and print where the file is."""
    from .capture import CaptureConfig, resolve_steps, run_capture
    from .families import LayerError, adapter_for

    require_positive(args, "pairs", "steps", "height", "width", "max_sequence_length")
    check_numbers(args, {"guidance": (0, None)})
    if args.preset == "paper":
        args.site, args.rows, args.trajectory = "attn", "all", "independent"
    pairs = prompts_from_args(load_pairs, args, args.pairs)
    pipe = load_from_args(args, family)
    adapter = adapter_for(pipe, guidance=args.guidance)
    check_loaded(adapter, args)
    try:
        save_layers = adapter.resolve_layers(parse_layer_list(args.save_activations))
    except LayerError as e:
        raise SystemExit(f"--save-activations: {e}") from None
    config = CaptureConfig(
        model=args.model,
        prompts_file=str(args.prompts),
        pairs=len(pairs),
        steps=args.steps,
        seed=args.seed,
        height=args.height,
        width=args.width,
        guidance=args.guidance,
        max_sequence_length=args.max_sequence_length,
        trajectory=args.trajectory,
        site=args.site,
        rows=args.rows,
        save_layers=tuple(save_layers),
        save_steps=resolve_steps(args.save_steps, args.steps) if save_layers else (),
    )
    start = time.perf_counter()
    out = run_capture(adapter, pairs, config, args.out, force=args.force)
    print(f"captured {len(pairs)} pairs x {args.steps} steps x {len(adapter.blocks)} layers "
          f"in {time.perf_counter() - start:.1f}s -> {out}")
    print(f"inspect with: python -m cslg.inspect {out}")
    return out


def grid_parser(doc: str, **d) -> argparse.ArgumentParser:
    """Flags of the final-experiment scripts; ``d`` holds the script's constants."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p, d["model"])
    p.add_argument("--prompts", default=d["prompts"], help="generation prompt file (JSON)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--out", default=d["out"], help="run folder")
    p.add_argument("--seeds", type=int_list, default=d["seeds"], help="e.g. '0,42,123'")
    add_image_args(p, d)
    p.add_argument("--methods", nargs="+", default=d["methods"], help=f"any of {', '.join(METHOD_NAMES)}")
    p.add_argument("--cfg-scales", type=float_list, default=d["cfg_scales"], help="CFG scales w (all CFG-based methods)")
    p.add_argument("--cslg-scales", type=float_list, default=d["cslg_scales"], help="skip-guidance scales s for cslg")
    p.add_argument("--layers", nargs="+", default=None, help="layers to skip for cslg, e.g. 9 12 or 5,s12")
    p.add_argument("--layers-from", default=None, metavar="LAYERS_JSON", help="take layers from visualize.py's layers.json")
    p.add_argument("--top-k", type=int, default=d["top_k"], help="with --layers-from: how many top-ranked layers")
    p.add_argument("--layer-weights", type=float_list, default=None, help="per-layer weights (weighted multi-layer skip)")
    p.add_argument("--layer-combinations", choices=LAYER_COMBINATIONS, default=d["layer_combinations"],
                   help="given: skip the layers together; all: every non-empty subset")
    p.add_argument("--cslg-start", type=float, default=d["cslg_start"], help="cslg window start (fraction of steps)")
    p.add_argument("--cslg-stop", type=float, default=d["cslg_stop"], help="cslg window stop (fraction of steps)")
    p.add_argument("--slg-layers", nargs="+", default=list(SLG_LAYERS), help="slg (diffusers SLG) layers")
    p.add_argument("--slg-start", type=float, default=SLG_START, help="slg (diffusers SLG) window start")
    p.add_argument("--slg-stop", type=float, default=SLG_STOP, help="slg (diffusers SLG) window stop")
    p.add_argument("--scfg-layers", nargs="+", default=None, help="blocks whose attention S-CFG records (default: middle third)")
    p.add_argument("--scfg-reference", action="store_true",
                   help="S-CFG as its reference code computes it (default: as the paper describes it; README, Baselines)")
    p.add_argument("--concept-scales", type=float_list, default=[7.5], help="ConceptDiffusion guidance scales w_g")
    p.add_argument("--pag-scales", type=float_list, default=[3.0], help="pag: perturbed-attention guidance scales s")
    p.add_argument("--pag-layers", nargs="+", default=None,
                   help="pag: blocks with identity attention (default: the family's diffusers default, else the cslg layers)")
    p.add_argument("--apg-eta", type=float, default=1.0, help="apg: weight η of the part of c - u parallel to c")
    p.add_argument("--apg-norm-threshold", type=float, default=15.0, help="apg: norm threshold r of c - u (0: none)")
    p.add_argument("--apg-momentum", type=float, default=None, help="apg: momentum β (default: none; the paper: -0.5)")
    p.add_argument("--cfgzero-zero-init-steps", type=int, default=1, help="cfgzero: steps with zero velocity first")
    p.add_argument("--guidance", type=float, default=d["guidance"], help=d["guidance_help"])
    p.add_argument("--negative-prompt", default=d["negative_prompt"], help="negative prompt of the unconditional pass")
    p.add_argument("--shard", default=None, help="i/n: run shard i of n (default: from accelerate / SLURM env, else 0/1)")
    return p


def read_layers_json(path: str, top_k: int) -> tuple[list[str], dict]:
    """The ``top_k`` best-ranked layers of a ``layers.json`` written by visualize.py, and the file's content."""
    if top_k < 1:
        raise SystemExit(f"--top-k must be at least 1, got {top_k}")
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        ranking = [row["layer"] for row in data["ranking"]]
    except FileNotFoundError:
        raise SystemExit(f"--layers-from: file not found: {path}") from None
    except IsADirectoryError:
        raise SystemExit(f"--layers-from: {path} is a folder; give its layers.json") from None
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise SystemExit(f"--layers-from: {path} is not a layers.json written by visualize.py ({e!r})") from None
    for rank, layer in enumerate(ranking[:top_k], start=1):
        if not isinstance(layer, str):
            raise SystemExit(f"--layers-from: {path}: ranking entry {rank} has layer {layer!r}, expected a name like \"5\"")
    return ranking[:top_k], data


def check_numbers(args: argparse.Namespace, ranges: dict[str, tuple[float | None, float | None]]) -> None:
    """Exit naming the flag when a number (or one of a list) is NaN, infinite or outside ``[low, high]``."""
    for dest, (low, high) in ranges.items():
        value = getattr(args, dest, None)
        for x in value if isinstance(value, list) else [value]:
            if x is None:
                continue
            if not math.isfinite(x) or (low is not None and x < low) or (high is not None and x > high):
                bounds = "" if low is None else f" at least {low:g}" if high is None else f" between {low:g} and {high:g}"
                raise SystemExit(f"--{dest.replace('_', '-')}: {x} is not a finite number{bounds}")


def check_loaded(adapter, args: argparse.Namespace, ranking_file: dict | None = None) -> None:
    """Exit with one line when the loaded model cannot take the image settings, or ``--layers-from`` ranks the layers
    of a model of another family (another model of the same family: a warning)."""
    try:
        adapter.check_settings(args.height, args.width, args.max_sequence_length)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if ranking_file is None:
        return
    family, model = ranking_file.get("family"), ranking_file.get("model")
    if family is not None and family != adapter.name:
        raise SystemExit(f"--layers-from {args.layers_from}: ranks the layers of a {family} model ({model}), but "
                         f"--model {args.model} is a {adapter.name} model")
    if model is not None and model != args.model:
        print(f"warning: --layers-from {args.layers_from} ranks the layers of {model}, not of {args.model}")


def run_grid_command(args: argparse.Namespace, family: str | None = None, default_layers: Sequence = ()) -> Path:
    """Validate the flags, build the grid, generate this shard's images, and print where they are."""
    import torch

    from .families import LayerError, adapter_class, adapter_class_by_name, adapter_for
    from .grid import GridSettings, ImageSettings, build_methods, enumerate_groups, parse_shard, run_grid
    from .sampling import check_layers

    require_positive(args, "steps", "height", "width", "max_sequence_length")
    check_numbers(args, {
        "cfg_scales": (0, None), "cslg_scales": (0, None), "pag_scales": (0, None), "concept_scales": (0, None),
        "layer_weights": (0, None), "guidance": (0, None), "cslg_start": (0, 1), "cslg_stop": (0, 1),
        "slg_start": (0, 1), "slg_stop": (0, 1), "apg_eta": (None, None), "apg_norm_threshold": (0, None),
        "apg_momentum": (None, None),
    })
    if not args.seeds:
        raise SystemExit("--seeds: give at least one seed")
    if repeated := sorted({s for s in args.seeds if args.seeds.count(s) > 1}):
        raise SystemExit(f"--seeds: seed {repeated[0]} is given twice")
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    prompts = prompts_from_args(load_generation_prompts, args, args.limit)
    ranking_file = None
    if args.layers is not None:
        layers = parse_layer_list(args.layers)
    elif args.layers_from is not None:
        ranked, ranking_file = read_layers_json(args.layers_from, args.top_k)
        layers = parse_layer_list(ranked)
    else:
        layers = parse_layer_list([str(x) for x in default_layers])

    explicit = args.layers is not None or args.layers_from is not None

    def methods_for(distilled: bool | None, pag_default: tuple[str, ...] = ()):
        """The grid's methods; ``pag`` takes --pag-layers, else the contrastive layers when given, else the family's
        diffusers default, else the cslg layers."""
        cfg_scales = args.cfg_scales
        if distilled is False and args.guidance is not None:
            cfg_scales = [args.guidance]  # without a distilled embedding, "guidance" is the CFG scale, as in diffusers
        try:
            return build_methods(GridSettings(
                methods=tuple(args.methods), cfg_scales=tuple(cfg_scales), cslg_scales=tuple(args.cslg_scales),
                layers=tuple(layers), layer_combinations=args.layer_combinations,
                layer_weights=tuple(args.layer_weights) if args.layer_weights else None,
                cslg_start=args.cslg_start, cslg_stop=args.cslg_stop,
                slg_layers=tuple(parse_layer_list(args.slg_layers)), slg_start=args.slg_start, slg_stop=args.slg_stop,
                scfg_layers=tuple(parse_layer_list(args.scfg_layers)) if args.scfg_layers else None,
                scfg_reference=args.scfg_reference,
                concept_scales=tuple(args.concept_scales), pag_scales=tuple(args.pag_scales),
                pag_layers=tuple(parse_layer_list(args.pag_layers)) if args.pag_layers else
                (None if explicit else pag_default or None),
                apg_eta=args.apg_eta, apg_norm_threshold=args.apg_norm_threshold, apg_momentum=args.apg_momentum,
                cfgzero_zero_init_steps=args.cfgzero_zero_init_steps,
            ))
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None

    # every method is built before the model loads, so bad settings fail fast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the build after loading warns
        if family is None:
            methods_for(None)
        else:
            known = adapter_class_by_name(family)
            methods_for(known.has_distilled_guidance, known.pag_default_layers)
    if args.device is None and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"  # one process per GPU under accelerate launch
    pipe = load_from_args(args, family)
    loaded = adapter_class(pipe)
    distilled = loaded.has_distilled_guidance
    methods = methods_for(distilled, loaded.pag_default_layers)
    adapter = adapter_for(pipe, guidance=args.guidance if distilled else None)
    check_loaded(adapter, args, ranking_file)
    for method in methods:
        try:
            check_layers(adapter, method)
        except LayerError as e:
            raise SystemExit(f"error: {method.name}: {e}") from None
    image_settings = ImageSettings(
        steps=args.steps, height=args.height, width=args.width, max_sequence_length=args.max_sequence_length,
        negative_prompt=args.negative_prompt, guidance=adapter.guidance if distilled else None,
    )
    groups = enumerate_groups(prompts, args.seeds, methods)
    print(f"grid: {len(prompts)} prompts x {len(args.seeds)} seeds x {len(methods)} method settings "
          f"= {len(prompts) * len(args.seeds) * len(methods)} images; shard {shard[0]}/{shard[1]}")
    try:
        manifest = run_grid(adapter, groups, image_settings, args.out, args.model, shard)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"run folder: {args.out}\n  manifest: {manifest}\n  contact sheets: {Path(args.out) / 'contact_sheets'}")
    print(f"score it with: python eval.py --run {args.out}")
    return manifest


def eval_parser(doc: str, engine: str, n_bootstrap: int, bootstrap_seed: int, out_subdir: str) -> argparse.ArgumentParser:
    """Flags of step 4 (OCR evaluation); the arguments are the script's constants."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--run", type=Path, metavar="DIR", help="run folder with manifest.jsonl and the images")
    source.add_argument("--images", type=Path, metavar="DIR", help="plain folder of images (needs --prompts)")
    parser.add_argument("--prompts", type=Path, metavar="FILE", help="generation prompt file for --images")
    parser.add_argument("--out", type=Path, metavar="DIR", help=f"output folder (default: <run|images>/{out_subdir})")
    parser.add_argument("--engine", choices=[*ENGINE_NAMES, ALL_ENGINES], default=engine,
                        help=f"OCR engine (default: %(default)s); {ALL_ENGINES}: score with every engine and "
                             "write their per-image agreement (agreement.csv) and its means in summary.csv")
    parser.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=None,
                        help="run OCR on the GPU (default: when CUDA is available)")
    parser.add_argument("--bootstrap", type=int, default=n_bootstrap, metavar="N",
                        help="bootstrap resamples (0: no CIs)")
    parser.add_argument("--seed", type=int, default=bootstrap_seed, help="bootstrap seed")
    parser.add_argument("--force", action="store_true", help="OCR every image again, ignoring earlier results")
    parser.set_defaults(out_subdir=out_subdir)
    return parser


def check_eval_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    if args.images is not None and args.prompts is None:
        parser.error("--images needs --prompts (the generation prompt file the images were made from)")
    if args.run is not None and args.prompts is not None:
        parser.error("--prompts goes with --images; a run folder's manifest already holds the prompts")
    if args.bootstrap < 0:
        parser.error("--bootstrap must be >= 0")
    return args


def run_eval_command(args: argparse.Namespace):
    """Score a run folder (or a plain image folder) with OCR and print the summary; returns the ``EvalResult``."""
    from .evaluation import evaluate, format_summary, load_manifest, records_from_images
    from .ocr import engine_names, get_engine

    base_dir = args.run if args.run is not None else args.images
    out_dir = args.out if args.out is not None else base_dir / args.out_subdir
    if out_dir.exists() and not out_dir.is_dir():
        raise SystemExit(f"--out {out_dir} is a file, not a folder")
    try:  # bad inputs end with their message, not a traceback
        if args.run is not None:
            records = load_manifest(args.run)
        else:
            records = records_from_images(args.images, args.prompts, exclude=[out_dir])
        engines = [get_engine(name, gpu=args.gpu) for name in engine_names(args.engine)]
    except (FileNotFoundError, ImportError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    result = evaluate(records, base_dir, out_dir, engines, n_bootstrap=args.bootstrap, seed=args.seed, force=args.force)

    print(format_summary(result.summary))
    n_errors = sum(s["n_errors"] for s in result.summary)
    print(f"\n{len(records)} images, {n_errors} not scored (see the error column); outputs in {out_dir}:")
    for path in result.files.values():
        print(f"  {path}")
    return result


def analyse_parser(doc: str, out: str, metric: str, step: str, top_k: int, dpi: int, ylim: float | None,
                   baseline: str = "input") -> argparse.ArgumentParser:
    """Flags of step 2 (contrastive analysis); the arguments are the script's constants."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("captures", nargs="+", help="capture files (.safetensors) of the same model")
    p.add_argument("--out", default=out, help="output folder for layers.json and the figures")
    p.add_argument("--metric", choices=METRICS, default=metric)
    p.add_argument("--baseline", choices=BASELINES, default=baseline,
                   help="s_{-1} of the first block: 'input', the similarity of the image tokens entering it (the drift "
                        "of the two trajectories is not charged to block 0), or 'one' (the paper)")
    p.add_argument("--step", default=step, help="'all' (mean over steps) or a step index (-1 = last)")
    p.add_argument("--top-k", type=int, default=top_k, help="how many layers to suggest")
    p.add_argument("--title", default=None, help="model name for the figure titles (default: from the capture)")
    p.add_argument("--dpi", type=int, default=dpi)
    p.add_argument("--ylim", type=float, default=ylim, help="symmetric y-range of the per-layer figure")
    p.add_argument("--preset", choices=["paper"], default=None,
                   help="paper: upstream's analysis (--metric difference --baseline one --step -1)")
    return p


def run_analyse_command(p: argparse.ArgumentParser, argv=None) -> Path:
    """Parse ``argv`` with ``p``, rank the layers of the captures and write layers.json and the figures."""
    from .activations import load_capture
    from .analysis import analyse

    args = p.parse_args(argv)
    if args.preset == "paper":
        args.metric, args.baseline, args.step = "difference", "one", "-1"
    if args.step != "all":
        try:
            args.step = int(args.step)
        except ValueError:
            p.error(f"--step must be 'all' or an integer, got {args.step!r}")
    if args.top_k < 1:
        p.error("--top-k must be at least 1")
    step = None if args.step == "all" else args.step
    try:
        result = analyse([load_capture(path) for path in args.captures], args.out, args.metric, step, args.top_k,
                         args.title, args.dpi, args.ylim, args.baseline)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None
    when = ("mean over steps" if step is None else f"step {step}") + f", baseline {args.baseline}"
    print(f"top-{result['top_k']} layers ({args.metric}, {when}): {', '.join(result['suggested'])}")
    print(f"wrote {result['path']}\n      " + "\n      ".join(result["figures"]))
    return Path(result["path"])
