"""CFG-Zero* (Fan et al. 2025, arXiv 2503.18886), as diffusers' ``ClassifierFreeZeroStarGuidance``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..executor import Pass
from .base import Method, cfg

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

    cfg_scale: float = 7.5
    zero_init_steps: int = 1
    name = "cfgzero"

    def __post_init__(self):
        if self.zero_init_steps < 0:
            raise ValueError(f"cfgzero: zero_init_steps must be >= 0, got {self.zero_init_steps}")

    def degenerate(self, num_steps, rows):
        if self.cfg_scale == 1 and self.zero_init_steps == 0:
            return "cfg scale 1 and no zero-init step: equals none"
        return None

    def rows(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        if step.index < self.zero_init_steps:
            return {"cond": Pass("cond")}
        return {"uncond": Pass("uncond"), "cond": Pass("cond")} if self.cfg_scale != 1.0 else {"cond": Pass("cond")}

    def combine(self, preds, step):
        c = preds["cond"]
        if step.index < self.zero_init_steps:
            return torch.zeros_like(c)
        if "uncond" not in preds:
            return c
        u = preds["uncond"] * optimised_scale(c, preds["uncond"])
        return cfg(u, c, self.cfg_scale)

    def params(self):
        return {"cfg_scale": self.cfg_scale, "zero_init_steps": self.zero_init_steps}

    @classmethod
    def from_grid(cls, s):
        return [cls(w, s.cfgzero_zero_init_steps) for w in s.cfg_scales]
