"""How a capture denoises the two prompts of a pair together (a method of the sampler's protocol)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance.passes import Pass
from ..methods.base import Method, cfg
from ..options import TRAJECTORIES
from ..prompts import PromptPair


@dataclass(frozen=True)
class PairTrajectory(Method):
    """Denoise the two prompts of a pair together: passes ``a`` (negative) and ``b`` (positive), plus their
    unconditional passes with CFG (``cfg_scale`` > 1, SD3). ``independent``: latent 0 follows ``a``, latent 1
    follows ``b``; ``shared``: one latent, driven by ``a``."""

    trajectory: str = "independent"
    cfg_scale: float | None = None
    name = "capture"

    def __post_init__(self):
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(f"--trajectory must be one of {', '.join(TRAJECTORIES)}, got {self.trajectory!r}")
        if self.cfg_scale is not None and not self.cfg_scale > 1:
            object.__setattr__(self, "cfg_scale", None)

    def conditions(self, pair: PromptPair) -> dict[str, str]:
        return ({"uncond": ""} if self.cfg_scale else {}) | {"a": pair.negative, "b": pair.positive}

    def passes(self, step):
        if self.trajectory == "shared":
            return ({"uncond": Pass("uncond")} if self.cfg_scale else {}) | {"a": Pass("a"), "b": Pass("b")}
        uncond = {"uncond_a": Pass("uncond", latent=0), "uncond_b": Pass("uncond", latent=1)} if self.cfg_scale else {}
        return uncond | {"a": Pass("a", latent=0), "b": Pass("b", latent=1)}

    def combine(self, preds, step):
        if self.trajectory == "shared":
            return cfg(preds["uncond"], preds["a"], self.cfg_scale) if self.cfg_scale else preds["a"]
        c = torch.cat([preds["a"], preds["b"]])
        return cfg(torch.cat([preds["uncond_a"], preds["uncond_b"]]), c, self.cfg_scale) if self.cfg_scale else c
