"""Skip-layer guidance: CSLG (contrastively chosen layers) and diffusers' SD3 SLG recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..executor import SKIP, Pass
from ..options import SLG_LAYERS, SLG_SCALE, SLG_START, SLG_STOP
from .base import Method, Step, canonical_layers, cfg, check_scale, check_window, in_window, layer_sets, step_window, perturbation_term, weighted_mean



@dataclass(frozen=True)
class CSLG(Method):
    """``v = u + w (c - u) + s (c - c_skip)`` at steps ``N*start <= i < N*stop``, CFG (or ``c``) outside; ``c_skip`` is the conditional pass with ``layers`` skipped (identities, not computed).

    With ``weights`` each layer gets its own skip pass and ``c_skip = Σ a_k c_skip(k) / Σ a_k`` (upstream
    "MSG"). ``cfg_scale = 1`` drops the unconditional pass: ``v = c + s (c - c_skip)``; upstream FLUX wrote
    ``c_skip + s' (c - c_skip)``, so ``s = s' - 1``.
    """

    layers: tuple[str, ...]
    scale: float
    cfg_scale: float = 1.0
    start: float = 0.0
    stop: float = 1.0
    weights: tuple[float, ...] | None = None
    name = "cslg"
    perturbation: ClassVar[str] = SKIP
    scale_key: ClassVar[str] = "cslg_scale"

    def __post_init__(self):
        object.__setattr__(self, "layers", canonical_layers(self.layers))
        if self.weights is not None:
            object.__setattr__(self, "weights", tuple(float(w) for w in self.weights))
        if not self.layers:
            raise ValueError(f"{self.name}: no layers to skip")
        if self.weights is not None:
            if len(self.weights) != len(self.layers):
                raise ValueError(f"{self.name}: {len(self.weights)} weights for {len(self.layers)} layers")
            if sum(self.weights) <= 0 or any(w < 0 for w in self.weights):
                raise ValueError(f"{self.name}: layer weights must be non-negative with a positive sum")
        check_window(self.name, self.start, self.stop)

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale != 1.0

    def skip_sets(self) -> list[tuple[str, ...]]:
        return [self.layers] if self.weights is None else [(layer,) for layer in self.layers]

    def referenced_layers(self):
        return self.layers

    def rows(self, request):
        rows = {"cond": request.prompt}
        return {"uncond": request.negative_prompt, **rows} if self.use_cfg else rows

    def active(self, step) -> bool:
        return step_window(step.index, step.num_steps, self.start, self.stop)

    def degenerate(self, num_steps, rows):
        base = "cfg" if self.use_cfg else "none"
        if self.scale == 0:
            return f"scale 0: equals {base}"
        if not any(self.active(Step(i, num_steps)) for i in range(num_steps)):
            return f"the step window {self.start}-{self.stop} holds no step of {num_steps}: equals {base}"
        return None

    def passes(self, step):
        base = {"uncond": Pass("uncond"), "cond": Pass("cond")} if self.use_cfg else {"cond": Pass("cond")}
        if not self.active(step):
            return base
        perturbed = {f"cond_perturbed{k}": Pass.of("cond", **{self.perturbation: s}) for k, s in enumerate(self.skip_sets())}
        return base | perturbed

    def combine(self, preds, step):
        c = preds["cond"]
        v = cfg(preds["uncond"], c, self.cfg_scale) if self.use_cfg else c
        perturbed = [preds[name] for name in preds if name.startswith("cond_perturbed")]
        if not perturbed:
            return v
        c_p = perturbed[0] if self.weights is None else weighted_mean(perturbed, self.weights)
        return v + perturbation_term(c, c_p, self.scale)

    def params(self):
        p = {"cfg_scale": self.cfg_scale, self.scale_key: self.scale, "layers": list(self.layers),
             "start": self.start, "stop": self.stop}
        if self.weights is not None:
            p["layer_weights"] = list(self.weights)
        return p

    @classmethod
    def from_grid(cls, s):
        if not s.layers:
            raise ValueError("cslg needs layers: set LAYERS, --layers or --layers-from")
        if s.layer_weights is not None and s.layer_combinations != "given":
            raise ValueError("--layer-weights applies to one layer set: use --layer-combinations given")
        scales = [check_scale(x, "--cslg-scales") for x in s.cslg_scales]
        return [
            cls(layers, scale, w, s.cslg_start, s.cslg_stop, s.layer_weights)
            for layers in layer_sets(s.layers, s.layer_combinations)
            for w in s.cfg_scales
            for scale in scales
        ]


@dataclass(frozen=True)
class SLG(CSLG):
    """diffusers' skip-layer guidance for SD3 (``skip_guidance_layers``): CSLG with its default layers 7, 8, 9,
    scale 2.8 and window 0.01-0.2, applied as diffusers does: in the strict window ``N*start < i < N*stop`` and
    only with ``w > 1`` (else no guidance at all: ``v = c``)."""

    layers: tuple[str, ...] = SLG_LAYERS
    scale: float = SLG_SCALE
    cfg_scale: float = 7.0
    start: float = SLG_START
    stop: float = SLG_STOP
    name = "slg"

    @property
    def use_cfg(self) -> bool:
        return self.cfg_scale > 1  # as diffusers' do_classifier_free_guidance

    def active(self, step) -> bool:
        """diffusers: only with CFG (``w > 1``), in the strict window ``N*start < i < N*stop``."""
        return self.cfg_scale > 1 and in_window(step.index, step.num_steps, self.start, self.stop)

    def degenerate(self, num_steps, rows):
        if self.cfg_scale <= 1:
            return f"cfg scale {self.cfg_scale} <= 1: diffusers applies no guidance at all, equals none"
        return super().degenerate(num_steps, rows)

    @classmethod
    def from_grid(cls, s):
        return [cls(s.slg_layers, s.slg_scale, w, s.slg_start, s.slg_stop) for w in s.cfg_scales]
