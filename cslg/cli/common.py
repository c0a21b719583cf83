"""What the commands share: the model and image flags, list parsing, number checks, loading the model and the
prompts with one-line errors. Imports nothing heavy: torch and diffusers load when a command runs."""

from __future__ import annotations

import argparse
import functools
import math
from typing import Callable

from ..options import DTYPE_NAMES, OFFLOAD_MODES, TINY_PRESETS
from ..prompts import PromptFileError


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Help with every flag's default (``(default: ...)``, unless the help text says it) and the description as
    written."""

    def _get_help_string(self, action):
        help = action.help or ""
        if "default" in help or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return help
        if isinstance(action, argparse.BooleanOptionalAction) or action.default is False:
            return help + (" (default: on)" if action.default else " (default: off)")
        default = " ".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return help + f" (default: {default if default != '' else repr('')})"


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


def optional_float(text: str) -> float | None:
    """A number, or ``none`` (argparse type of an option whose ``None`` means "not used")."""
    if text.strip().lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or 'none', got {text!r}") from None


def add_model_args(p: argparse.ArgumentParser, model: str | None) -> None:
    p.add_argument("--model", default=model, required=model is None,
                   help=f"diffusers id, local save_pretrained folder, or a tiny preset ({', '.join(TINY_PRESETS)})")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--dtype", choices=DTYPE_NAMES, default=None, help="default: bf16 on GPU, fp32 on CPU")
    p.add_argument("--offload", choices=OFFLOAD_MODES, default="none", help="model / sequential CPU offload (GPU only)")


def add_image_args(p: argparse.ArgumentParser, d: dict, steps_help: str = "denoising steps") -> None:
    p.add_argument("--steps", type=int, default=d["steps"], help=steps_help)
    p.add_argument("--height", type=int, default=d["height"], help="image height in pixels")
    p.add_argument("--width", type=int, default=d["width"], help="image width in pixels")
    p.add_argument("--max-sequence-length", type=int, default=d["max_sequence_length"],
                   help="text tokens of the (T5 / LLM) text encoder")


def require_positive(args: argparse.Namespace, *flags: str) -> None:
    """Exit with a message naming the first of ``flags`` (argparse dests) that is below 1."""
    for flag in flags:
        if getattr(args, flag) < 1:
            raise SystemExit(f"--{flag.replace('_', '-')} must be at least 1, got {getattr(args, flag)}")


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


def load_from_args(args: argparse.Namespace, family: str | None):
    """The pipeline of ``--model`` on ``--device`` / ``--dtype`` / ``--offload`` (one line on failure)."""
    try:
        import torch

        from ..models import load_pipeline

        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}.get(args.dtype)
        return load_pipeline(args.model, family, args.device, dtype, args.offload)
    except (FileNotFoundError, ValueError) as e:
        raise SystemExit(f"error: {e}") from None


def prompts_from_args(loader, args: argparse.Namespace, limit: int | None):
    try:
        return loader(args.prompts, limit=limit)
    except PromptFileError as e:
        raise SystemExit(f"--prompts: {e}") from None


def check_loaded(adapter, args: argparse.Namespace, ranking_file: dict | None = None,
                 flag: str = "--layers-from") -> None:
    """Exit with one line when the loaded model cannot take the image settings, or the ranking of ``flag`` ranks the
    layers of a model of another family (another model of the same family: a warning)."""
    try:
        adapter.check_settings(args.height, args.width, args.max_sequence_length)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    if ranking_file is None:
        return
    dest = flag.lstrip("-").replace("-", "_")
    family, model = ranking_file.get("family"), ranking_file.get("model")
    if family is not None and family != adapter.name:
        raise SystemExit(f"{flag} {getattr(args, dest)}: ranks the layers of a {family} model ({model}), but "
                         f"--model {args.model} is a {adapter.name} model")
    if model is not None and model != args.model:
        print(f"warning: {flag} {getattr(args, dest)} ranks the layers of {model}, not of {args.model}")


MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes


def check_seeds(seeds: list[int], flag: str = "--seeds") -> None:
    """Exit naming the flag for no seed, a repeated one, or one a torch generator cannot take."""
    if not seeds:
        raise SystemExit(f"{flag}: give at least one seed")
    for seed in seeds:
        if not 0 <= seed <= MAX_SEED:
            raise SystemExit(f"{flag}: seed {seed} is not between 0 and 2**63 - 1")
    if len(set(seeds)) < len(seeds):
        raise SystemExit(f"{flag}: seed {next(s for s in seeds if seeds.count(s) > 1)} is given twice")


def writable(folder, flag: str = "--out") -> None:
    """Exit with one line unless files can be written in ``folder`` (checked before the model loads)."""
    from ..io import check_writable

    try:
        check_writable(folder, flag)
    except ValueError as e:
        raise SystemExit(f"error: {e}") from None


def one_line_errors(run: Callable) -> Callable:
    """A command's ``run`` whose operating-system errors (a full disk, a file-size limit, a folder made read-only
    during the run) end in one line: what failed and that the finished work is kept."""

    @functools.wraps(run)
    def wrapped(*args, **kwargs):
        try:
            return run(*args, **kwargs)
        except OSError as e:
            where = f": {e.filename}" if e.filename else ""
            raise SystemExit(f"error: {e.strerror or e}{where} (what was finished is kept: run the same command "
                             "again to resume)") from None

    return wrapped
