"""Finding a scorer's released checkpoint file (a head, a state dict) as the user has it."""

from __future__ import annotations

from importlib import import_module
from pathlib import Path
from types import ModuleType

import torch

from .base import MissingModelError, Scorer


def checkpoint_file(scorer: Scorer, filename: str) -> Path:
    """The checkpoint ``filename`` of ``scorer.model``: the path itself when it is a file, ``filename`` inside it
    when it is a folder, else ``filename`` in the Hub repository ``scorer.model`` (downloaded once, then cached).
    A file that cannot be found raises the scorer's one-line ``MissingModelError``."""
    path = Path(scorer.model)
    if path.is_file():
        return path
    if path.is_dir():
        if (path / filename).is_file():
            return path / filename
        raise scorer.missing(f"no {filename} in the folder")
    from transformers.utils import cached_file

    try:
        return Path(cached_file(scorer.model, filename))
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
        raise MissingModelError(f"{scorer.name}: cannot load model {scorer.model!r} ({reason}); download it where "
                                f"there is network (`hf download {scorer.model} {filename}`) and pass the file "
                                f"with --{scorer.name}-model PATH") from None


def load_state_dict(scorer: Scorer, file: Path) -> dict[str, torch.Tensor]:
    """The tensors of a ``.safetensors`` file or a ``torch.save`` file (tensors only: ``weights_only``); a file
    holding ``{"state_dict": ...}`` (a training checkpoint) gives that dict."""
    try:
        if file.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(file))
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: one line naming it
        raise scorer.missing(f"{file.name} is not a readable checkpoint: {e}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise scorer.missing(f"{file.name} holds no state dict of tensors")
    return state


def companion_missing(scorer: Scorer, companion: str, default: str, error: BaseException) -> MissingModelError:
    """The one-line error for a model a scorer loads beside its own (a head's CLIP, a checkpoint's processor)."""
    reason = str(error).strip().splitlines()[0][:160] if str(error).strip() else type(error).__name__
    return MissingModelError(f"{scorer.name}: cannot load {companion!r} ({reason}); put a save_pretrained copy of "
                             f"{default} in the model's folder and pass it with --{scorer.name}-model PATH")


def require(scorer: Scorer | type[Scorer], module: str, package: str) -> ModuleType:
    """The optional ``module`` a scorer needs; its absence is a one-line ``MissingModelError`` naming the install."""
    try:
        return import_module(module)
    except ImportError:
        raise MissingModelError(f"{scorer.name}: needs the optional package {package}: "
                                f"pip install 'cslg[scorers]' (or pip install {package})") from None
