"""Adaptive projected guidance (Sadat et al. 2024, arXiv 2410.02416), as diffusers' ``AdaptiveProjectedGuidance``."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..guidance.passes import Pass
from .base import Method, cfg_scale_option, start_option, stop_option
from .schema import option


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
    """APG at steps ``int(N*start) <= i < int(N*stop)`` (diffusers' guider window), ``v = c`` outside; ``momentum``
    β (``None``: no momentum), ``norm_threshold`` r, ``eta`` η. The momentum average is kept in the run's
    ``step.memory``. Defaults as the paper recommends (η 0, r 15, β -0.5); diffusers' guider defaults to η 1 and
    no momentum, which equals CFG wherever ``‖c - u‖ <= r``."""

    cfg_scale: float | None = cfg_scale_option()
    eta: float = option(0.0, "weight η of the part of c - u parallel to c (1: kept as CFG keeps it)")
    norm_threshold: float = option(15.0, "norm threshold r of c - u (0: no limit)", low=0)
    momentum: float | None = option(-0.5, "reverse momentum β of c - u (none: no momentum)", low=-1, high=1)
    start: float = start_option()
    stop: float = stop_option()
    name = "apg"
    title = "adaptive projected guidance (diffusers' AdaptiveProjectedGuidance)"
    window_rule = "floor"

    def active(self, step) -> bool:
        return self.cfg_scale != 1.0 and super().active(step)

    def degenerate(self, num_steps, conditions):
        if self.cfg_scale == 1:
            return "cfg scale 1: equals none"
        if self.eta == 1 and not self.momentum:
            where = "at every step" if self.norm_threshold == 0 else f"wherever ‖c - u‖ <= {self.norm_threshold:g}"
            return f"eta 1 without momentum: equals cfg {where}"
        return self.empty_window(num_steps, "none")

    def conditions(self, request):
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
        return step.postprocess_cfg(apg(u, c, self.cfg_scale, self.eta, self.norm_threshold, running), c)
