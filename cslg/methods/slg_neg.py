"""Skipped-negative skip-layer guidance (ComfyUI's ``SkipLayerGuidanceDiTSimple``, Wan2GP): two passes, the
unconditional one with blocks skipped."""

from __future__ import annotations

from dataclasses import dataclass

from ..executor import Pass
from .base import Method, Step, canonical_layers, cfg, check_window, step_window


@dataclass(frozen=True)
class SkippedNegativeSLG(Method):
    """``v = u_skip + w (c - u_skip)`` at steps ``N*start <= i < N*stop``, CFG outside; ``u_skip`` is the
    negative-prompt pass with ``layers`` skipped. Inactive at ``w = 1`` (then ``v = c``).

    With the negative prompt equal to the prompt this is upstream CSLG's FLUX formula ``c_skip + s' (c - c_skip)``
    with ``s' = w``, i.e. ``cslg`` with ``cfg_scale = 1`` and ``scale = w - 1``.
    """

    layers: tuple[str, ...]
    cfg_scale: float = 3.0
    start: float = 0.0
    stop: float = 1.0
    name = "slg-neg"

    def __post_init__(self):
        object.__setattr__(self, "layers", canonical_layers(self.layers))
        if not self.layers:
            raise ValueError(f"{self.name}: no layers to skip")
        check_window(self.name, self.start, self.stop)

    def referenced_layers(self):
        return self.layers

    def rows(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        skip = self.layers if self.active(step) else ()
        return {"uncond": Pass.of("uncond", skip=skip), "cond": Pass("cond")}

    def active(self, step) -> bool:
        return step_window(step.index, step.num_steps, self.start, self.stop)

    def combine(self, preds, step):
        return cfg(preds["uncond"], preds["cond"], self.cfg_scale)

    def degenerate(self, num_steps, rows):
        if self.cfg_scale == 1:
            return "cfg scale 1: the skipped negative pass has no weight, equals none"
        if not any(self.active(Step(i, num_steps)) for i in range(num_steps)):
            return f"the step window {self.start}-{self.stop} holds no step of {num_steps}: equals cfg"
        return None

    def params(self):
        return {"cfg_scale": self.cfg_scale, "layers": list(self.layers), "start": self.start, "stop": self.stop}

    @classmethod
    def from_grid(cls, s):
        if not s.layers:
            raise ValueError("slg-neg needs layers: set LAYERS, --layers or --layers-from")
        return [cls(s.layers, w, s.cslg_start, s.cslg_stop) for w in s.cfg_scales]
