"""Model family adapters, looked up from the pipeline object (subclasses included), and their tiny presets.

Adding a family: one module with an ``Adapter`` subclass and its tiny preset (``Adapter.tiny``), its entry in
``ADAPTERS``, its preset names in ``cslg.options.TINY_PRESETS``, and its tests.
"""

from __future__ import annotations

import typing
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch.nn as nn
    from diffusers import DiffusionPipeline

    from .base import Adapter
    from .tiny import TinySize

# family module -> its adapter class, or classes (imported on first use: ``cslg.families.layout`` stays free of
# diffusers)
FAMILIES = {
    "flux": "FluxAdapter",
    "sd3": "SD3Adapter",
    "qwenimage": "QwenImageAdapter",
    "pixart": ("PixArtSigmaAdapter", "PixArtAlphaAdapter"),
    "sana": "SanaAdapter",
    "zimage": "ZImageAdapter",
    "flux2": "Flux2Adapter",
    "flux2_klein": "Flux2KleinAdapter",
    "chroma": "ChromaAdapter",
    "cogview4": "CogView4Adapter",
    "wan": "WanAdapter",
}
# names this package re-exports from its modules, loaded on first use
_WHERE = {
    **dict.fromkeys(("IMAGE_ONLY", "IMAGE_TEXT", "JOINT", "TEXT_IMAGE", "Adapter", "BlockList", "LayerError"), ".base"),
    **dict.fromkeys(("AttentionLayout", "Conditioning", "LatentLayout", "Streams", "TextRoles"), ".layout"),
    "TinySize": ".tiny",
}


def __getattr__(name: str):
    if name == "ADAPTERS":
        value = tuple(getattr(import_module(f".{module}", __name__), cls) for module, classes in FAMILIES.items()
                      for cls in ((classes,) if isinstance(classes, str) else classes))
    elif name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def adapter_class(pipe: DiffusionPipeline) -> type[Adapter]:
    """The adapter class for ``pipe``'s family: by pipeline class, else by the class of its transformer (the
    family's img2img, inpaint, ControlNet and PAG pipelines)."""
    ADAPTERS = __getattr__("ADAPTERS")
    for cls in ADAPTERS:
        if isinstance(pipe, cls.pipeline_classes):
            return cls
    transformer = getattr(pipe, "transformer", None)
    for cls in ADAPTERS:
        if transformer is not None and isinstance(transformer, transformer_classes(cls)):
            return cls
    supported = ", ".join(c.__name__ for cls in ADAPTERS for c in cls.pipeline_classes)
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}: supported are {supported} (and their subclasses)")


def adapter_class_by_name(name: str) -> type[Adapter]:
    """The adapter class of the family called ``name``."""
    for cls in __getattr__("ADAPTERS"):
        if cls.name == name:
            return cls
    raise ValueError(f"unknown family {name!r}; choose one of {', '.join(family_names())}")


def adapter_for(pipe: DiffusionPipeline, guidance: float | None = None, frames: int | None = None) -> Adapter:
    """The adapter of ``pipe`` (``guidance``: the distilled guidance embedding, where the model has one; ``frames``:
    the frames of a video family's videos, default the pipeline's). Another pipeline of the family (img2img, PAG)
    runs through a view of its components as the family's own pipeline; one whose extra component or mask cslg
    would not apply (ControlNet, inpainting) is refused, naming the supported ones."""
    cls = adapter_class(pipe)
    if not isinstance(pipe, cls.pipeline_classes):
        pipe = family_view(cls, pipe)
    return cls(pipe, guidance, frames)


def family_view(cls: type[Adapter], pipe: DiffusionPipeline) -> DiffusionPipeline:
    """``pipe``'s components as ``cls``' own pipeline, unless generating with that would drop a part of ``pipe``."""
    import inspect

    from .base import pipeline_view

    own = cls.pipeline_classes[0]
    expected = set(inspect.signature(own.__init__).parameters)
    extra = sorted(k for k, v in pipe.components.items() if v is not None and k not in expected)
    masked = "mask_image" in inspect.signature(type(pipe).__call__).parameters
    if extra or masked:
        dropped = f"its {', '.join(extra)}" if extra else "its mask (inpainting)"
        raise ValueError(f"{type(pipe).__name__}: cslg would not apply {dropped}; use {own.__name__} or the "
                         f"family's img2img / PAG pipeline (generate(..., image=, strength=) for image-to-image)")
    return pipeline_view(own, pipe)


def transformer_classes(cls: type[Adapter]) -> tuple[type, ...]:
    """The transformer classes the family's pipelines take (their ``transformer`` argument's annotation)."""
    hints = [typing.get_type_hints(p.__init__).get("transformer") for p in cls.pipeline_classes]
    return tuple(c for hint in hints for c in typing.get_args(hint) or (hint,)
                 if isinstance(c, type) and c is not type(None))


def adapter_for_transformer(transformer: nn.Module, guidance: float | None = None) -> Adapter:
    """The adapter of a transformer met without its diffusers pipeline (a modular pipeline's denoiser): the first
    family whose pipelines take its class. Its block-level knowledge (blocks, their output order, attention layout,
    family defaults) works; what needs the pipeline (encoding, noise, timesteps, decoding) raises naming it."""
    ADAPTERS = __getattr__("ADAPTERS")
    for cls in ADAPTERS:
        if isinstance(transformer, transformer_classes(cls)):
            return cls(TransformerOnly(transformer), guidance)
    supported = ", ".join(c.__name__ for cls in ADAPTERS for c in transformer_classes(cls))
    raise ValueError(f"unsupported transformer {type(transformer).__name__}: supported are {supported} (and their "
                     "subclasses)")


class TransformerOnly:
    """What an adapter built from a transformer alone has for a pipeline: the transformer."""

    def __init__(self, transformer: nn.Module):
        self.transformer = transformer

    def __getattr__(self, name: str) -> Any:
        raise AttributeError(f"the {type(self.transformer).__name__} adapter was built from the transformer alone, "
                             f"without its diffusers pipeline: {name!r} needs the pipeline")


def family_of(pipe: DiffusionPipeline) -> str:
    """The family name of ``pipe`` (``"flux"``, ``"sd3"``, ...)."""
    return adapter_class(pipe).name


def family_names() -> list[str]:
    return [cls.name for cls in __getattr__("ADAPTERS")]


def build_tiny(preset: str, size: TinySize | None = None, seed: int = 0) -> DiffusionPipeline:
    """The tiny preset called ``preset`` (``tiny-flux``, ``tiny-sd3``, ...), built offline with random weights
    (``size``: a ``TinySize``, default the presets' own)."""
    ADAPTERS = __getattr__("ADAPTERS")
    for cls in ADAPTERS:
        if preset in cls.tiny_presets:
            return cls.tiny(preset, size or __getattr__("TinySize")(), seed)
    presets = [p for cls in ADAPTERS for p in cls.tiny_presets]
    raise ValueError(f"unknown tiny preset {preset!r}; choose one of {', '.join(presets)}")


__all__ = [
    "ADAPTERS", "Adapter", "AttentionLayout", "BlockList", "Conditioning", "IMAGE_ONLY", "IMAGE_TEXT", "JOINT",
    "LatentLayout", "LayerError", "Streams", "TEXT_IMAGE", "TextRoles", "TinySize", "adapter_class", "adapter_class_by_name",
    "adapter_for", "adapter_for_transformer", "build_tiny", "family_of", "family_names",
]
