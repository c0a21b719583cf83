"""No guidance and classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

from ..executor import Pass
from .base import Method, cfg


@dataclass(frozen=True)
class NoGuidance(Method):
    """``v = c``: the conditional prediction alone (SD3: guidance 1; FLUX-dev: its distilled guidance only)."""

    name = "none"

    def rows(self, request):
        return {"cond": request.prompt}

    def passes(self, step):
        return {"cond": Pass("cond")}

    def combine(self, preds, step):
        return preds["cond"]

    @classmethod
    def from_grid(cls, s):
        return [cls()]


@dataclass(frozen=True)
class CFG(Method):
    """``v = u + w (c - u)``; on FLUX and Qwen-Image this is true CFG with the negative prompt."""

    scale: float = 7.0
    name = "cfg"

    def rows(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        return {"uncond": Pass("uncond"), "cond": Pass("cond")}

    def combine(self, preds, step):
        return cfg(preds["uncond"], preds["cond"], self.scale)

    def degenerate(self, num_steps, rows):
        return "cfg scale 1: equals none" if self.scale == 1 else None

    def params(self):
        return {"cfg_scale": self.scale}

    @classmethod
    def from_grid(cls, s):
        return [cls(w) for w in s.cfg_scales]
