"""``cslg grid`` and the final-experiment scripts: step 3, a grid of methods x settings x prompts x seeds into a run
folder. The method flags are derived from the methods' option declarations (``cslg.methods.schema``): one flag per
option (``--<method>-<option>``, shared ones like ``--cfg-scales`` once), grid axes taking several values."""

from __future__ import annotations

import argparse
import json
import os
import warnings
from pathlib import Path
from typing import Any, Sequence

from ..layers import canonical_layers, repeated
from ..options import LAYER_COMBINATIONS, LAYER_VARIANTS
from ..prompts import load_generation_prompts
from .common import (
    add_image_args,
    add_model_args,
    check_loaded,
    check_numbers,
    check_seeds,
    float_list,
    int_list,
    load_from_args,
    one_line_errors,
    optional_float,
    prompts_from_args,
    require_positive,
    writable,
)

DEFAULTS = dict(model=None, prompts="prompt_datasets/text_eval_prompts.json", out="outputs/run", seeds=[0], steps=28,
                height=1024, width=1024, max_sequence_length=256, methods=["none", "cfg", "cslg"], top_k=1,
                layer_combinations="given", guidance=None, negative_prompt="", cslg_scales=[1.0],
                guidance_help="distilled guidance embedding where the model has one, else the CFG scale")
LAYERS_FLAG = "--layers"  # the grid's layers: from --layers, --layers-from or the script's LAYERS
WEIGHTS_FLAG = "--layer-weights"  # their weights: from --layer-weights or --layer-weights-from


def dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def method_flags() -> dict[str, list[tuple[type, Any]]]:
    """Flag -> the ``(method class, Declared)`` of every option it sets, in registry order."""
    from ..methods import REGISTRY
    from ..methods.schema import declared

    flags: dict[str, list[tuple[type, Any]]] = {}
    for cls in REGISTRY.values():
        for d in declared(cls):
            flags.setdefault(d.flag(cls.name), []).append((cls, d))
    return flags


def _add_option_flag(group, flag: str, users: list[tuple[type, Any]], default: Any) -> None:
    cls, d = users[0]
    names = ", ".join(dict.fromkeys(c.name for c, _ in users))
    help = f"{names}: {d.spec.help} ({d.describe()}{', several: one cell each' if d.spec.axis else ''})"
    kwargs: dict[str, Any] = {"default": default, "help": help.replace("%", "%%")}
    if d.kind == "layers":
        kwargs.update(nargs="+", metavar="LAYER")
    elif d.kind == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif d.kind == "str":
        kwargs["choices"] = d.spec.choices
    elif d.kind == "floats" or d.spec.axis:
        kwargs["type"] = int_list if d.kind == "int" else float_list
    else:
        kwargs["type"] = int if d.kind == "int" else optional_float if d.optional else float
    group.add_argument(flag, **kwargs)


def configure(p: argparse.ArgumentParser, **overrides) -> argparse.ArgumentParser:
    """The flags of step 3; ``overrides`` are a script's constants (keys of ``DEFAULTS`` and flag dests such as
    ``cfg_scales``)."""
    from ..methods import REGISTRY
    from ..methods.schema import MISSING

    d = {**DEFAULTS, **overrides}
    add_model_args(p, d["model"])
    p.add_argument("--prompts", default=d["prompts"], help="generation prompt file (JSON)")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--out", default=d["out"], help="run folder")
    p.add_argument("--seeds", type=int_list, default=d["seeds"], help="e.g. '0,42,123'")
    add_image_args(p, d)
    p.add_argument("--frames", type=int, default=d.get("frames"),
                   help="frames per video of a video family (Wan: 4k+1; default: the pipeline's, 81)")
    p.add_argument("--methods", nargs="+", default=d["methods"], metavar="METHOD", help=f"any of {', '.join(REGISTRY)}")
    p.add_argument("--guidance", type=float, default=d["guidance"], help=d["guidance_help"])
    p.add_argument("--negative-prompt", default=d["negative_prompt"], help="negative prompt of the unconditional pass")
    p.add_argument("--shard", default=None, help="i/n: run shard i of n (default: from accelerate / SLURM env, else 0/1)")
    p.add_argument("--batch-size", type=int, default=d.get("batch_size", 1),
                   help="images of one method (seeds, prompts) in one batched forward (more: faster, more memory)")
    layers = p.add_argument_group("layers", "the blocks of --layers feed every method whose layers have no flag of "
                                  "their own or are not given")
    layers.add_argument("--layers-from", default=None, metavar="LAYERS_JSON",
                        help="take --layers from a ranking (layers.json of cslg analyse / visualize.py)")
    layers.add_argument("--layer-weights-from", default=None, metavar="LAYERS_JSON",
                        help="take --layers and their weights from a ranking (the top --top-k layers, weights "
                             "proportional to their scores' distance from the ranking's neutral score, summing to 1): "
                             "each method of --layers and --layer-weights runs in every --layer-variants")
    layers.add_argument("--layer-variants", nargs="+", choices=LAYER_VARIANTS, default=None, metavar="VARIANT",
                        help="with --layer-weights-from: single (the top layer), joint (all skipped in one pass), "
                             "uniform / weighted (mean of per-layer skipped passes, equal / ranking weights) "
                             f"(default: all: {' '.join(LAYER_VARIANTS)})")
    layers.add_argument("--top-k", type=int, default=d["top_k"],
                        help="with --layers-from / --layer-weights-from: how many top-ranked layers")
    layers.add_argument("--layer-combinations", choices=LAYER_COMBINATIONS, default=d["layer_combinations"],
                        help="given: the layers skipped together; all: every non-empty subset, one cell each")
    groups = {}
    for flag, users in method_flags().items():
        shared = len({cls.name for cls, _ in users}) > 1
        name = "layers" if flag == LAYERS_FLAG else "several methods" if shared else users[0][0].name
        if name not in groups:
            groups[name] = layers if name == "layers" else p.add_argument_group(
                name, None if shared else REGISTRY[name].title)
        decl = users[0][1]
        default = d.get(dest(flag))
        if default is None and decl.default is not MISSING and decl.default is not None and flag != LAYERS_FLAG:
            default = [decl.default] if decl.spec.axis and decl.kind != "layers" else decl.default
            default = list(default) if isinstance(default, tuple) else default
        _add_option_flag(groups[name], flag, users, None if flag == LAYERS_FLAG else default)
    return p


def read_layers_json(path: str, top_k: int) -> tuple[list[str], dict]:
    """The ``top_k`` best-ranked layers of a ``layers.json`` ranking, and the file's content."""
    if top_k < 1:
        raise SystemExit(f"--top-k must be at least 1, got {top_k}")
    data = _read_json(path, "--layers-from")
    try:
        ranking = [row["layer"] for row in data["ranking"]]
    except (KeyError, TypeError) as e:
        raise SystemExit(f"--layers-from: {path} is not a layers.json written by cslg analyse ({e!r})") from None
    for rank, layer in enumerate(ranking, start=1):
        if not isinstance(layer, str) or canonical_layers(layer) != (layer,):
            raise SystemExit(f"--layers-from: {path}: ranking entry {rank} has layer {layer!r}, expected a name like "
                             "\"5\" or \"s12\"")
    if (twice := repeated(ranking)) is not None:
        raise SystemExit(f"--layers-from: {path}: layer {twice!r} is ranked twice")
    if top_k > len(ranking):
        raise SystemExit(f"--top-k {top_k}: {path} ranks only {len(ranking)} layer(s)")
    return ranking[:top_k], data


def _read_json(path: str, flag: str) -> Any:
    """The JSON content of the file of ``flag``; exits with one line naming the flag when it cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SystemExit(f"{flag}: file not found: {path}") from None
    except IsADirectoryError:
        raise SystemExit(f"{flag}: {path} is a folder; give its layers.json") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SystemExit(f"{flag}: {path} is not a layers.json written by cslg analyse ({e!r})") from None


def read_layer_weights(args: argparse.Namespace) -> tuple[list[str], list[float], dict]:
    """The top ``--top-k`` layers of ``--layer-weights-from``, their weights (``cslg.analysis.weights``) and the file's
    content; exits with one line naming the flag that conflicts or the file that cannot give weights."""
    from ..analysis.weights import layer_weights

    for flag in ("layers", "layers_from", "layer_weights"):
        if getattr(args, flag) is not None:
            raise SystemExit(f"--layer-weights-from: the layers and weights come from {args.layer_weights_from}; "
                             f"leave out --{flag.replace('_', '-')}")
    if args.top_k < 2:
        raise SystemExit(f"--layer-weights-from: give --top-k 2 or more (upstream: 5), got {args.top_k}: with one "
                         "layer the variants are the same")
    if args.layer_combinations != "given":
        raise SystemExit("--layer-weights-from applies to one layer set: use --layer-combinations given")
    data = _read_json(args.layer_weights_from, "--layer-weights-from")
    try:
        layers, weights = layer_weights(data, args.top_k, args.layer_weights_from)
    except ValueError as e:
        raise SystemExit(f"--layer-weights-from: {e}") from None
    return list(canonical_layers(layers, "--layer-weights-from")), weights, data


def grid_layers(args: argparse.Namespace, default_layers: Sequence) -> tuple[list[str], bool, dict | None]:
    """``(layers, explicit, ranking file)``: the grid's layers from ``--layers``, ``--layers-from``,
    ``--layer-weights-from`` or the script's default, whether the user gave them, and the ranking file's content
    when they come from one."""
    if args.layer_weights_from is not None:
        layers, _, ranking = read_layer_weights(args)
    elif args.layers is not None:
        layers, ranking = list(canonical_layers(args.layers, "--layers")), None
    elif args.layers_from is not None:
        layers, ranking = read_layers_json(args.layers_from, args.top_k)
    else:
        return list(canonical_layers(list(default_layers), "LAYERS")), False, None
    if (twice := repeated(layers)) is not None:
        raise SystemExit(f"--layers: layer {twice!r} is given twice")
    return layers, True, ranking


def check_method_flags(args: argparse.Namespace) -> None:
    """Exit naming the flag when a method flag's value (or one of its values) is not what its option declares."""
    from ..methods.schema import check_value

    for flag, users in method_flags().items():
        d, value = users[0][1], getattr(args, dest(flag))
        if value is None:  # not given: the option's default (or the family's) applies
            continue
        for v in value if d.spec.axis and d.kind != "layers" and isinstance(value, list) else [value]:
            try:
                check_value(flag, d, tuple(v) if isinstance(v, list) else v)
            except (TypeError, ValueError) as e:
                raise SystemExit(str(e)) from None


def option_values(cls: type, args: argparse.Namespace, layers: list[str], explicit: bool) -> dict[str, Any]:
    """The values of ``cls``'s options in this grid; ``None`` where the family default applies."""
    from ..methods.schema import declared

    values = {}
    for d in declared(cls):
        flag = d.flag(cls.name)
        value = (layers or None) if flag == LAYERS_FLAG else getattr(args, dest(flag))
        if value is None and d.spec.fallback == LAYERS_FLAG and explicit:
            value = layers
        if value is None and d.required:
            source = "set LAYERS, --layers or --layers-from" if flag == LAYERS_FLAG else f"give {flag}"
            raise SystemExit(f"error: {cls.name} needs {d.name}: {source}")
        values[d.name] = value
    return values


def grid_methods(args: argparse.Namespace, layers: list[str], explicit: bool, cfg_scales: list[float] | None = None):
    """Every method cell of the grid, in the order of ``--methods`` (before binding to a model)."""
    from ..grid.cells import method_cells
    from ..methods import REGISTRY

    if args.layer_weights is not None and args.layer_combinations != "given":
        raise SystemExit("error: --layer-weights applies to one layer set: use --layer-combinations given")
    if unknown := [name for name in args.methods if name not in REGISTRY]:
        raise SystemExit(f"error: --methods: unknown method {unknown[0]!r}; choose from {', '.join(REGISTRY)}")
    if args.layer_variants is not None and args.layer_weights_from is None:
        raise SystemExit("--layer-variants: give --layer-weights-from (the ranking whose layers they combine)")
    check_method_flags(args)
    weights = read_layer_weights(args)[1] if args.layer_weights_from is not None else None
    cells, weighted = [], False
    for name in dict.fromkeys(args.methods):
        cls = REGISTRY[name]
        values = option_values(cls, args, layers, explicit)
        if cfg_scales is not None and "cfg_scale" in values:
            values["cfg_scale"] = cfg_scales
        variants = variant_values(cls, values, args.layer_variants or LAYER_VARIANTS, weights)
        weighted |= weights is not None and variants != [values]
        try:
            for variant in variants:
                cells += method_cells(cls, variant, args.layer_combinations)
        except (TypeError, ValueError) as e:
            raise SystemExit(f"error: {e}") from None
    if weights is not None and not weighted:
        raise SystemExit(f"--layer-weights-from: no method of --methods takes {WEIGHTS_FLAG} (e.g. cslg); for the "
                         "layers alone use --layers-from")
    return cells


def variant_values(cls: type, values: dict[str, Any], variants: Sequence[str],
                   weights: list[float] | None) -> list[dict[str, Any]]:
    """``values`` once per layer variant (``methods.base.layer_variant``) for a method whose options take
    ``--layers`` and ``--layer-weights``, when the weights come from a ranking; else ``[values]``."""
    from ..methods.base import layer_variant
    from ..methods.schema import declared

    names = {d.flag(cls.name): d.name for d in declared(cls)}
    if weights is None or LAYERS_FLAG not in names or WEIGHTS_FLAG not in names:
        return [values]
    layers = values[names[LAYERS_FLAG]]
    out = []
    for variant in dict.fromkeys(variants):
        chosen, a = layer_variant(variant, layers, weights)
        out.append({**values, names[LAYERS_FLAG]: list(chosen), names[WEIGHTS_FLAG]: a})
    return out


def cells_of(argv: Sequence[str], default_layers: Sequence = ()) -> list:
    """The method cells ``cslg grid`` builds for the flags ``argv`` (before they are bound to a model), e.g. to
    look at a grid before running it."""
    from ..grid.cells import unique_cells

    args = configure(argparse.ArgumentParser(prog="cslg grid"), model="-").parse_args(list(argv))
    layers, explicit, _ = grid_layers(args, default_layers)
    return unique_cells(grid_methods(args, layers, explicit))


@one_line_errors
def run(args: argparse.Namespace, parser: argparse.ArgumentParser, family: str | None = None,
        default_layers: Sequence = ()) -> Path:
    """Validate the flags, build the grid, generate this shard's images, and print where they are."""
    import torch

    from ..families import LayerError, adapter_class, adapter_for
    from ..grid import ImageSettings, enumerate_groups, parse_shard, run_grid
    from ..grid.cells import unique_cells

    require_positive(args, "steps", "height", "width", "max_sequence_length", "batch_size")
    check_numbers(args, {"guidance": (0, None)})
    check_seeds(args.seeds)
    if not args.out:
        raise SystemExit("--out: give a run folder")
    try:
        shard = parse_shard(args.shard)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    prompts = prompts_from_args(load_generation_prompts, args, args.limit)
    layers, explicit, ranking_file = grid_layers(args, default_layers)
    grid_methods(args, layers, explicit)  # every cell is built before the model loads, so bad settings fail fast
    out = Path(args.out)
    if not any(f.exists() and not f.is_dir() for f in (out, *out.parents)):  # a file in the way: run_grid says so
        writable(out)
    if args.device is None and "LOCAL_RANK" in os.environ and torch.cuda.is_available():
        args.device = f"cuda:{os.environ['LOCAL_RANK']}"  # one process per GPU under accelerate launch
    pipe = load_from_args(args, family)
    distilled = adapter_class(pipe).has_distilled_guidance
    # without a distilled embedding, "guidance" is the CFG scale, as in diffusers' pipelines
    cfg_scales = [args.guidance] if not distilled and args.guidance is not None else None
    if args.frames is not None and not adapter_class(pipe).video:
        raise SystemExit(f"--frames: {adapter_class(pipe).name} models make images, not videos")
    adapter = adapter_for(pipe, guidance=args.guidance if distilled else None, frames=args.frames)
    check_loaded(adapter, args, ranking_file, "--layer-weights-from" if args.layer_weights_from else "--layers-from")
    methods = []
    for method in grid_methods(args, layers, explicit, cfg_scales):
        try:
            methods.append(method.bind(adapter))
        except (LayerError, ValueError) as e:
            raise SystemExit(f"error: {method.name}: {e}") from None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        methods = unique_cells(methods)
    for w in caught:
        print(f"warning: {w.message}")
    image_settings = ImageSettings(
        steps=args.steps, height=args.height, width=args.width, max_sequence_length=args.max_sequence_length,
        negative_prompt=args.negative_prompt, guidance=adapter.guidance if distilled else None,
        frames=adapter.frames if adapter.video else None,
    )
    groups = enumerate_groups(prompts, args.seeds, methods)
    print(f"grid: {len(prompts)} prompts x {len(args.seeds)} seeds x {len(methods)} method settings "
          f"= {len(prompts) * len(args.seeds) * len(methods)} images; shard {shard[0]}/{shard[1]}")
    try:
        manifest = run_grid(adapter, groups, image_settings, args.out, args.model, shard, batch_size=args.batch_size)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None
    print(f"run folder: {args.out}\n  manifest: {manifest}\n  contact sheets: {Path(args.out) / 'contact_sheets'}")
    print(f"score it with: cslg eval --run {args.out}")
    return manifest
