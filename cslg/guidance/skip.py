"""Skipping blocks inside any caller of the transformer (diffusers' own pipelines included): a skipped block
returns its inputs unchanged, in its own output order, and is not computed.

The skip is a diffusers ``ModelHook`` registered on each block's ``HookRegistry`` for the duration of the context
and removed by name afterwards, so hooks a user put on a block (diffusers hooks and torch forward hooks) keep
working during and after it. While a block is skipped, the diffusers hooks registered on it before the context
do not run (the block's computation, theirs included, is replaced); torch's own pre- and post-forward hooks do.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Any, Iterator, Sequence

import torch.nn as nn
from diffusers import DiffusionPipeline
from diffusers.hooks import HookRegistry, ModelHook

from ..families import adapter_class, adapter_for, adapter_for_transformer
from ..families.base import Adapter, BlockList

HOOK_NAME = "cslg_skip_block"


class SkipBlockHook(ModelHook):
    """A block as an identity on its streams, returned in the block's own output order."""

    def __init__(self, adapter: Adapter, convention: BlockList):
        super().__init__()
        self.adapter, self.convention = adapter, convention

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        return self.adapter.skip_output(self.convention, args, kwargs)


@contextmanager
def hooked(module: nn.Module, hook: ModelHook, name: str) -> Iterator[None]:
    """``hook`` registered on ``module`` (as ``name``) while the context is held; the module's registry is left as
    it was found (removed again when the context created it)."""
    had_registry, had_forward = hasattr(module, "_diffusers_hook"), "forward" in vars(module)
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(hook, name)
    try:
        yield
    finally:
        registry.remove_hook(name, recurse=False)
        if not had_registry and not registry.hooks:
            del module._diffusers_hook
            if not had_forward:  # the registry restored the class's forward as an instance attribute
                vars(module).pop("forward", None)


def block_adapter(pipe: DiffusionPipeline | nn.Module) -> Adapter:
    """The adapter of ``pipe`` for block-level work: its family's pipeline, or any other pipeline (img2img, inpaint,
    ControlNet, PAG, modular) or a bare transformer of a supported family's transformer class."""
    try:
        adapter_class(pipe)
    except ValueError:
        return adapter_for_transformer(getattr(pipe, "transformer", pipe))
    return adapter_for(pipe)


@contextmanager
def skip_blocks(pipe: DiffusionPipeline | nn.Module, layers: str | int | Sequence[str | int]) -> Iterator[list[str]]:
    """Within the context, the named blocks of ``pipe.transformer`` are identities for every stream::

        with skip_blocks(pipe, ["5", "s12"]):
            image = pipe(prompt).images[0]

    ``pipe``: any pipeline whose transformer is of a supported family (its text-to-image, img2img, inpaint,
    ControlNet or PAG pipeline), or the transformer itself. Yields the canonical layer names; an unknown layer raises
    ``cslg.LayerError`` before anything changes.
    """
    adapter = block_adapter(pipe)
    names = adapter.resolve_layers(layers)
    with hooked_blocks(adapter.transformer, skip_hooks(adapter, names)):
        yield names


def skip_hooks(adapter: Adapter, names: Sequence[str]) -> list[tuple[nn.Module, ModelHook, str]]:
    """``(block, hook, hook name)`` that make the blocks ``names`` (canonical) identities (``hooked_blocks``)."""
    return [(block, SkipBlockHook(adapter, convention), HOOK_NAME)
            for name, block, convention in adapter.blocks if name in set(names)]


@contextmanager
def hooked_blocks(transformer: nn.Module, hooks: Sequence[tuple[nn.Module, ModelHook, str]]) -> Iterator[None]:
    """Every ``(block, hook, name)`` of ``transformer`` registered while the context is held (``hooked``) and
    removed by name afterwards."""
    with ExitStack() as stack:
        for block, hook, name in hooks:
            stack.enter_context(hooked(block, hook, name))
        _invalidate_registry_cache(transformer)
        try:
            yield
        finally:
            stack.close()
            _invalidate_registry_cache(transformer)


def _invalidate_registry_cache(transformer: nn.Module) -> None:
    """Hooks added below a model with a diffusers registry (e.g. a cache's) stale its cached child list."""
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None and hasattr(registry, "invalidate_child_registries_cache"):
        registry.invalidate_child_registries_cache()
