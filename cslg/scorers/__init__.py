"""Scorers: one module per measure of a generated image (or of a set of images), beside the method registry.

    import cslg.scorers
    clip = cslg.scorers.get("clip", model="openai/clip-vit-large-patch14", device="cuda")
    values = clip.score(images, prompts)            # list[float], one per image

Each scorer is a small class (``base.Scorer`` for per-image measures, ``base.SetScorer`` for set-level ones such as
FID) with real loading code (a Hub id or a local ``save_pretrained`` folder / file), its definition and source in its
docstring, and ``save_tiny(folder)``, which writes a small randomly initialised model of the real class (tests and
the demo). A model that cannot be loaded raises ``MissingModelError``: one line naming the model, how to get it and
the ``--<name>-model`` flag. Adding a scorer: its module and its line in ``REGISTRY``.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from .base import MissingModelError, Scorer, SetScorer

# scorer name -> (module, class); modules are imported on first use (each may need an optional package)
REGISTRY: dict[str, tuple[str, str]] = {
    "clip": ("clip", "CLIPScore"),
    "hands": ("hands", "Hands"),
    "fid": ("fid", "FID"),
    "kid": ("kid", "KID"),
    "vqascore": ("vqascore", "VQAScore"),
    "vlm-judge": ("vlm_judge", "VLMJudge"),
    "aesthetic-v1": ("aesthetic_v1", "AestheticV1"),
    "aesthetic-v2": ("aesthetic_v2", "AestheticV2"),
    "pickscore": ("pickscore", "PickScore"),
    "hpsv2": ("hpsv2", "HPSv2"),
    "imagereward": ("imagereward", "ImageReward"),
}


def names() -> list[str]:
    """Every registered scorer name, in registry order."""
    return list(REGISTRY)


def scorer_class(name: str) -> type[Scorer]:
    """The class registered as ``name``."""
    if name not in REGISTRY:
        raise ValueError(f"unknown scorer {name!r}; choose from {', '.join(REGISTRY) or '(none registered)'}")
    module, cls = REGISTRY[name]
    return getattr(import_module(f".{module}", __name__), cls)


def get(name: str, model: str | None = None, device: Any = None, **options: Any) -> Scorer:
    """An instance of the scorer ``name`` (``model``: Hub id or local path; None: the scorer's default)."""
    return scorer_class(name)(model=model, device=device, **options)


def __getattr__(attr: str):
    for module, cls in REGISTRY.values():
        if cls == attr:
            value = getattr(import_module(f".{module}", __name__), cls)
            globals()[attr] = value
            return value
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")


__all__ = ["REGISTRY", "MissingModelError", "Scorer", "SetScorer", "get", "names", "scorer_class"]
