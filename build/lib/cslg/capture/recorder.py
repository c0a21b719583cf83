"""The block observer of a capture: the cosine similarity of a pair's image tokens after every block."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F

from ..families.base import Adapter
from ..guidance.executor import INPUT


class CosineRecorder:
    """Block observer: ``cosine[step, layer]`` between the image tokens of the pair's passes at the capture site
    after each block, and ``input_cosine[step]`` for the tokens entering the first block.

    ``site``: ``"block"``, the block's image-token output (residual stream); ``"attn"``, the image-token attention
    output before gating and residual (the paper's point: forward hooks on the adapter's ``attention_output``).
    ``compared``: the pairs of passes compared, their cosines averaged (``[("a", "b")]``; upstream's SD3 with CFG
    also compares the unconditional passes).
    """

    def __init__(self, adapter: Adapter, steps: int, site: str, compared: Sequence[tuple[str, str]],
                 save_layers=(), save_steps=()):
        self.adapter, self.site, self.compared = adapter, site, list(compared)
        self.index = {name: i for i, name in enumerate(adapter.layer_names)}
        self.cosine = torch.full((steps, len(adapter.layer_names)), float("nan"), device=adapter.device)
        self.input_cosine = torch.full((steps,), float("nan"), device=adapter.device)
        self.save_layers, self.save_steps = set(save_layers), list(save_steps)
        self.saved: dict[str, list[torch.Tensor]] = {name: [] for name in save_layers}
        self.site_outputs: dict[str, tuple[Callable, torch.Tensor]] = {}

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """With ``site="attn"``: keep the latest attention output of every block until its observer reads it."""
        handles = []
        if self.site == "attn":
            for name, block, convention in self.adapter.blocks:
                module, take = self.adapter.attention_output(block, convention)
                handles.append(module.register_forward_hook(
                    lambda m, args, out, name=name, take=take: self.site_outputs.__setitem__(name, (take, out)) and None
                ))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def at_step(self, step: int):
        def observe(layer: str, streams, lanes) -> None:
            image = streams.image
            if layer != INPUT and self.site == "attn":
                take, output = self.site_outputs.pop(layer)
                image = take(output, streams.image.shape[1])
            pairs = [image[[lanes[a], lanes[b]]] for a, b in self.compared]
            similarity = torch.stack([F.cosine_similarity(x[0].float().flatten(), x[1].float().flatten(), dim=0)
                                      for x in pairs]).mean()
            if layer == INPUT:
                self.input_cosine[step] = similarity
                return
            self.cosine[step, self.index[layer]] = similarity
            if layer in self.save_layers and step in self.save_steps:
                self.saved[layer].append(pairs[-1].detach().to("cpu", torch.float32))

        return observe
