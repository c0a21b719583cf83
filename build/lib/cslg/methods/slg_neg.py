"""Skipped-negative skip-layer guidance (ComfyUI's ``SkipLayerGuidanceDiTSimple``, Wan2GP): two passes, the
unconditional one with blocks skipped."""

from __future__ import annotations

from dataclasses import dataclass

from ..guidance.passes import Pass
from .base import Method, cfg, cfg_scale_option, start_option, stop_option
from .schema import option


@dataclass(frozen=True)
class SkippedNegativeSLG(Method):
    """``v = u_skip + w (c - u_skip)`` at steps ``N*start <= i < N*stop``, CFG outside; ``u_skip`` is the
    negative-prompt pass with ``layers`` skipped. Inactive at ``w = 1`` (then ``v = c``).

    With the negative prompt equal to the prompt this is upstream CSLG's FLUX formula ``c_skip + s' (c - c_skip)``
    with ``s' = w``, i.e. ``cslg`` with ``cfg_scale = 1`` and ``scale = w - 1``.
    """

    layers: tuple[str, ...] = option(help="blocks skipped in the negative pass", flag="--layers")
    cfg_scale: float | None = cfg_scale_option()
    start: float = start_option()
    stop: float = stop_option()
    name = "slg-neg"
    title = "skipped-negative SLG: the negative pass with the blocks skipped"

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        skip = self.layers if self.active(step) else ()
        return {"uncond": Pass.of("uncond", skip=skip), "cond": Pass("cond")}

    def combine(self, preds, step):
        return step.postprocess_cfg(cfg(preds["uncond"], preds["cond"], self.cfg_scale), preds["cond"])

    def degenerate(self, num_steps, conditions):
        if self.cfg_scale == 1:
            return "cfg scale 1: the skipped negative pass has no weight, equals none"
        return self.empty_window(num_steps, "cfg")
