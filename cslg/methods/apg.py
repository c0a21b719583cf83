"""Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416), as diffusers' ``AdaptiveProjectedGuidance``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..executor import Pass
from .base import Method, Step, check_scale, check_window, guider_window


def apg(u: torch.Tensor, c: torch.Tensor, w: float, eta: float, norm_threshold: float,
        running: torch.Tensor | None) -> torch.Tensor:
    """``v = u + w (Δ⊥ + η Δ∥)`` with ``Δ = c - u`` (or its momentum average ``running``), first scaled to norm
    at most ``r = norm_threshold`` (``r = 0``: no limit); ``Δ∥`` is the part parallel to ``c`` and ``Δ⊥`` the rest.
    Norms and projections run over all non-batch dimensions."""
    diff = c - u if running is None else running
    dims = list(range(1, diff.ndim))
    if norm_threshold > 0:
        diff = diff * torch.clamp(norm_threshold / diff.norm(p=2, dim=dims, keepdim=True), max=1.0)
    v0, v1 = diff.double(), torch.nn.functional.normalize(c.double(), dim=dims)
    parallel = (v0 * v1).sum(dim=dims, keepdim=True) * v1
    update = (v0 - parallel) + eta * parallel
    return u + w * update.to(diff.dtype)


def momentum_average(previous: torch.Tensor | None, diff: torch.Tensor, beta: float) -> torch.Tensor:
    """Reverse momentum of APG: ``m_t = Δ_t + β m_{t-1}`` (``m_{-1} = 0``; the paper uses ``β < 0``)."""
    return diff if previous is None else diff + beta * previous


@dataclass(frozen=True)
class APG(Method):
    """APG at steps ``N*start <= i < N*stop``, ``v = c`` outside; ``momentum`` β (``None``: no momentum),
    ``norm_threshold`` r, ``eta`` η. The momentum average is kept in the run's ``step.memory``."""

    cfg_scale: float = 7.5
    eta: float = 1.0
    norm_threshold: float = 15.0
    momentum: float | None = None
    start: float = 0.0
    stop: float = 1.0
    name = "apg"

    def __post_init__(self):
        check_window(self.name, self.start, self.stop)

    def active(self, step) -> bool:
        return self.cfg_scale != 1.0 and guider_window(step.index, step.num_steps, self.start, self.stop)

    def degenerate(self, num_steps, rows):
        if not any(self.active(Step(i, num_steps)) for i in range(num_steps)):
            return f"cfg scale {self.cfg_scale} or the step window {self.start}-{self.stop} leaves no APG step: equals none"
        return None

    def rows(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        return {"uncond": Pass("uncond"), "cond": Pass("cond")} if self.active(step) else {"cond": Pass("cond")}

    def combine(self, preds, step):
        c = preds["cond"]
        if "uncond" not in preds:
            return c
        u, running = preds["uncond"], None
        if self.momentum is not None:
            running = momentum_average(step.memory.get("apg_momentum"), c - u, self.momentum)
            step.memory["apg_momentum"] = running
        return apg(u, c, self.cfg_scale, self.eta, self.norm_threshold, running)

    def params(self):
        return {"cfg_scale": self.cfg_scale, "eta": self.eta, "norm_threshold": self.norm_threshold,
                "momentum": self.momentum, "start": self.start, "stop": self.stop}

    @classmethod
    def from_grid(cls, s):
        return [cls(w, s.apg_eta, check_scale(s.apg_norm_threshold, "--apg-norm-threshold"), s.apg_momentum)
                for w in s.cfg_scales]
