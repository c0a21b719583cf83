"""Several images of one method in one forward: a method's conditionings and passes repeated per image, image ``j``
on batch latent ``j``, combined image by image. The sampler sees one method; each image keeps its own prompt, noise
and per-run memory (e.g. APG's momentum, in ``step.memory[j]``)."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Sequence

import torch

from ..guidance.passes import Pass
from ..methods.base import Method, Request, Step

SEPARATOR = "@"


def per_image(name: str, j: int) -> str:
    return f"{name}{SEPARATOR}{j}"


def of_image(named: dict[str, Any], j: int) -> dict[str, Any]:
    """The entries of image ``j`` of a per-image dictionary, under their method's own names."""
    suffix = f"{SEPARATOR}{j}"
    return {name[: -len(suffix)]: value for name, value in named.items() if name.endswith(suffix)}


@dataclass(frozen=True, eq=False)
class Batched(Method):
    """``method`` for ``requests`` (one image each, image ``j`` on latent ``j``)."""

    method: Method = None
    requests: tuple[Request, ...] = ()
    name = "batched"

    def bind(self, adapter) -> Method:
        bound = self.method.bind(adapter)
        return self if bound is self.method else Batched(bound, self.requests)

    def conditions(self, request: Request | None = None) -> dict[str, str]:
        return {per_image(name, j): text for j, r in enumerate(self.requests)
                for name, text in self.method.conditions(r).items()}

    def _step(self, step: Step, j: int) -> Step:
        return replace(step, conditions=tuple(of_image(dict.fromkeys(step.conditions), j)),
                       memory=step.memory.setdefault(j, {}),
                       attention=of_image(dict(step.attention), j), roles=of_image(dict(step.roles), j))

    def passes(self, step: Step) -> dict[str, Pass]:
        return {per_image(name, j): replace(p, condition=per_image(p.condition, j), latent=j)
                for j in range(len(self.requests)) for name, p in self.method.passes(self._step(step, j)).items()}

    def combine(self, preds, step):
        return torch.cat([self.method.combine(of_image(dict(preds), j), self._step(step, j))
                          for j in range(len(self.requests))])

    def degenerate(self, num_steps, conditions):
        return self.method.degenerate(num_steps, of_image(dict(conditions), 0))

    def recorded_attention(self, adapter):
        recorded = self.method.recorded_attention(adapter)
        if recorded is None:
            return None
        layers, names = recorded
        return layers, tuple(per_image(n, j) for j in range(len(self.requests)) for n in names)

    def attention_sink(self):
        return self.method.attention_sink()


def batched(method: Method, requests: Sequence[Request]) -> Method:
    """``method`` itself for one request, else a ``Batched`` method for all of them."""
    return method if len(requests) == 1 else Batched(method, tuple(requests))
