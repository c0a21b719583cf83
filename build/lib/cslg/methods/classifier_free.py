"""No guidance and classifier-free guidance."""

from __future__ import annotations

from dataclasses import dataclass

from ..guidance.passes import Pass
from .base import Method, cfg, cfg_scale_option


@dataclass(frozen=True)
class NoGuidance(Method):
    """``v = c``: the conditional prediction alone (SD3: guidance 1; FLUX-dev: its distilled guidance only)."""

    name = "none"
    title = "no guidance: the conditional prediction alone"

    def conditions(self, request):
        return {"cond": request.prompt}

    def passes(self, step):
        return {"cond": Pass("cond")}

    def combine(self, preds, step):
        return preds["cond"]


@dataclass(frozen=True)
class CFG(Method):
    """``v = u + w (c - u)``; on FLUX and Qwen-Image this is true CFG with the negative prompt."""

    cfg_scale: float | None = cfg_scale_option()
    name = "cfg"
    title = "classifier-free guidance"

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        return {"uncond": Pass("uncond"), "cond": Pass("cond")}

    def combine(self, preds, step):
        return step.postprocess_cfg(cfg(preds["uncond"], preds["cond"], self.cfg_scale), preds["cond"])

    def degenerate(self, num_steps, conditions):
        return "cfg scale 1: equals none" if self.cfg_scale == 1 else None
