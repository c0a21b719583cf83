"""CFG-Zero* (Fan et al. 2025, arXiv 2503.18886), as diffusers' ``ClassifierFreeZeroStarGuidance``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance.passes import Pass
from .base import Method, cfg, cfg_scale_option
from .schema import option

EPS = 1e-8


def optimised_scale(c: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """``s* = <c, u> / ‖u‖²`` per batch entry (over the flattened prediction), shaped to broadcast."""
    cf, uf = c.flatten(1).float(), u.flatten(1).float()
    s = (cf * uf).sum(dim=1, keepdim=True) / ((uf**2).sum(dim=1, keepdim=True) + EPS)
    return s.to(c.dtype).view(-1, *(1,) * (c.ndim - 1))


@dataclass(frozen=True)
class CFGZeroStar(Method):
    """``v = 0`` for the first ``zero_init_steps`` steps, then ``v = s* u + w (c - s* u)`` with
    ``s* = <c, u> / ‖u‖²``."""

    cfg_scale: float | None = cfg_scale_option()
    zero_init_steps: int = option(1, "first steps with zero velocity", low=0)
    name = "cfgzero"
    title = "CFG-Zero*: optimised unconditional scale, zero velocity first"

    def degenerate(self, num_steps, conditions):
        if self.zero_init_steps >= num_steps:
            return f"{self.zero_init_steps} zero-init steps of {num_steps}: every step has zero velocity"
        if self.cfg_scale == 1 and self.zero_init_steps == 0:
            return "cfg scale 1 and no zero-init step: equals none"
        return None

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        if step.index < self.zero_init_steps or self.cfg_scale == 1.0:
            return {"cond": Pass("cond")}
        return {"uncond": Pass("uncond"), "cond": Pass("cond")}

    def combine(self, preds, step):
        c = preds["cond"]
        if step.index < self.zero_init_steps:
            return torch.zeros_like(c)
        if "uncond" not in preds:
            return c
        u = preds["uncond"] * optimised_scale(c, preds["uncond"])
        return step.postprocess_cfg(cfg(u, c, self.cfg_scale), c)
