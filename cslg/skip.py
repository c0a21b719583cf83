"""Skipping transformer blocks: a skipped block returns its inputs unchanged and is not computed."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
import torch.nn as nn

from .layers import get_block, resolve_layers


def _identity_block(hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor, **_) -> tuple:
    # Every FLUX / SD3 block returns (encoder_hidden_states, hidden_states).
    return encoder_hidden_states, hidden_states


@contextmanager
def skip_blocks(transformer: nn.Module, layers: Iterable[str | int]) -> Iterator[list[str]]:
    """Within the context, the named blocks of ``transformer`` are identities for both streams.

    Works with any caller of the transformer, diffusers' own pipelines included::

        with skip_blocks(pipe.transformer, ["5", "s12"]):
            image = pipe(prompt).images[0]
    """
    names = resolve_layers(transformer, layers)
    blocks = [get_block(transformer, name) for name in names]
    for block in blocks:
        block.forward = _identity_block
    try:
        yield names
    finally:
        for block in blocks:
            del block.forward
