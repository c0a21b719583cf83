"""Skipping blocks inside any caller of the transformer (diffusers' own pipelines included): a skipped block
returns its inputs unchanged, in its own output order, and is not computed."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

from diffusers import DiffusionPipeline

from .families import adapter_for


@contextmanager
def skip_blocks(pipe: DiffusionPipeline, layers: Sequence[str | int]) -> Iterator[list[str]]:
    """Within the context, the named blocks of ``pipe.transformer`` are identities for every stream::

        with skip_blocks(pipe, ["5", "s12"]):
            image = pipe(prompt).images[0]
    """
    adapter = adapter_for(pipe)
    names = adapter.resolve_layers(layers)
    patched = []
    for name in names:
        _, block, convention = adapter.blocks[adapter.layer_names.index(name)]
        block.forward = lambda *args, _c=convention, **kwargs: adapter.skip_output(_c, args, kwargs)
        patched.append(block)
    try:
        yield names
    finally:
        for block in patched:
            del block.forward
