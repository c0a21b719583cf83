"""Layer names: ``"i"`` is ``transformer.transformer_blocks[i]`` (FLUX double-stream / SD3 joint block i,
as upstream), ``"s<i>"`` is FLUX's ``single_transformer_blocks[i]``. Names are canonical strings."""

from __future__ import annotations

from typing import Iterable, Sequence

import torch.nn as nn


class LayerError(ValueError):
    """An unknown or malformed layer name; the message gives the valid range."""


def layer_names(transformer: nn.Module) -> list[str]:
    """All block names in execution order."""
    names = [str(i) for i in range(len(transformer.transformer_blocks))]
    names += [f"s{i}" for i in range(len(getattr(transformer, "single_transformer_blocks", ())))]
    return names


def valid_range(transformer: nn.Module) -> str:
    """Human-readable valid layer range, e.g. ``0-18 (double-stream) and s0-s37 (single-stream)``."""
    n = len(transformer.transformer_blocks)
    n_single = len(getattr(transformer, "single_transformer_blocks", ()))
    if n_single:
        return f"0-{n - 1} (double-stream blocks) and s0-s{n_single - 1} (single-stream blocks)"
    return f"0-{n - 1}"


def resolve_layers(transformer: nn.Module, layers: Iterable[str | int]) -> list[str]:
    """Canonical names for ``layers`` (ints or strings like ``"5"``, ``"s12"``), in the given order, no duplicates."""
    valid = layer_names(transformer)
    out: list[str] = []
    for layer in layers:
        name = str(layer).strip().lower()
        if name not in valid:
            raise LayerError(f"unknown layer {layer!r}: valid layers are {valid_range(transformer)}")
        if name in out:
            raise LayerError(f"layer {layer!r} is given twice")
        out.append(name)
    return out


def get_blocks(transformer: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, block)`` for every block, in execution order."""
    blocks = list(transformer.transformer_blocks) + list(getattr(transformer, "single_transformer_blocks", ()))
    return list(zip(layer_names(transformer), blocks))


def get_block(transformer: nn.Module, name: str | int) -> nn.Module:
    """The block module for one layer name."""
    (name,) = resolve_layers(transformer, [name])
    return dict(get_blocks(transformer))[name]


def parse_layer_list(text: str | Sequence[str]) -> list[str]:
    """Split a CLI value like ``"3,8 S12"`` or ``["3", "8,s12"]`` into lowercase layer tokens (not yet
    validated against a model: see ``resolve_layers``)."""
    parts = [text] if isinstance(text, str) else list(text)
    return [tok.lower() for part in parts for tok in part.replace(",", " ").split()]
