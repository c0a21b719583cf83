"""Model family adapters, looked up from the pipeline object (subclasses included).

Adding a family: one module with an ``Adapter`` subclass, its entry in ``ADAPTERS``, and a tiny preset.
"""

from __future__ import annotations

from diffusers import DiffusionPipeline

from .base import (
    IMAGE, IMAGE_TEXT, TEXT_IMAGE, Adapter, AttentionLayout, BlockList, Conditioning, LatentLayout, LayerError,
    Streams, TextRoles,
)
from .flux import FluxAdapter
from .pixart import PixArtSigmaAdapter
from .qwenimage import QwenImageAdapter
from .sd3 import SD3Adapter

ADAPTERS: tuple[type[Adapter], ...] = (FluxAdapter, SD3Adapter, QwenImageAdapter, PixArtSigmaAdapter)


def adapter_class(pipe: DiffusionPipeline) -> type[Adapter]:
    """The adapter class for ``pipe``'s family."""
    for cls in ADAPTERS:
        if isinstance(pipe, cls.pipeline_classes):
            return cls
    supported = ", ".join(c.__name__ for cls in ADAPTERS for c in cls.pipeline_classes)
    raise ValueError(f"unsupported pipeline {type(pipe).__name__}: supported are {supported} (and their subclasses)")


def adapter_class_by_name(name: str) -> type[Adapter]:
    """The adapter class of the family called ``name``."""
    for cls in ADAPTERS:
        if cls.name == name:
            return cls
    raise ValueError(f"unknown family {name!r}; choose one of {', '.join(family_names())}")


def adapter_for(pipe: DiffusionPipeline, guidance: float | None = None) -> Adapter:
    """The adapter of ``pipe`` (``guidance``: the distilled guidance embedding, where the model has one)."""
    return adapter_class(pipe)(pipe, guidance)


def family_of(pipe: DiffusionPipeline) -> str:
    """The family name of ``pipe`` (``"flux"``, ``"sd3"``, ...)."""
    return adapter_class(pipe).name


def family_names() -> list[str]:
    return [cls.name for cls in ADAPTERS]


__all__ = [
    "ADAPTERS", "Adapter", "AttentionLayout", "BlockList", "Conditioning", "IMAGE", "IMAGE_TEXT", "LatentLayout",
    "LayerError", "Streams", "TEXT_IMAGE", "TextRoles", "adapter_class", "adapter_class_by_name", "adapter_for", "family_of", "family_names",
]
