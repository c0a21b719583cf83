"""Skip-layer guidance: CSLG (contrastively chosen layers) and diffusers' SD3 SLG recipe."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..guidance.passes import SKIP, Pass
from .base import Method, cfg, cfg_scale_option, perturbation_term, start_option, stop_option, unbound_check, weighted_mean
from .schema import option


@dataclass(frozen=True)
class CSLG(Method):
    """``v = u + w (c - u) + s (c - c_skip)`` at steps ``N*start <= i < N*stop``, CFG (or ``c``) outside; ``c_skip``
    is the conditional pass with ``layers`` skipped (identities, not computed).

    With ``weights`` each layer gets its own skip pass and ``c_skip = Σ a_k c_skip(k) / Σ a_k`` (upstream
    "MSG"). ``cfg_scale = 1`` drops the unconditional pass: ``v = c + s (c - c_skip)``; upstream FLUX wrote
    ``c_skip + s' (c - c_skip)``, so ``s = s' - 1``.
    """

    layers: tuple[str, ...] = option(help="blocks skipped in the perturbed pass (e.g. 5 or 5,s12)", axis=True,
                                     flag="--layers")
    scale: float = option(help="skip-guidance scale s", low=0, axis=True)
    cfg_scale: float | None = cfg_scale_option()
    start: float = start_option()
    stop: float = stop_option()
    weights: tuple[float, ...] | None = option(None, "per-layer weights a_k: one skip pass per layer, averaged "
                                               "(default: all layers skipped in one pass)", low=0,
                                               flag="--layer-weights")
    name = "cslg"
    title = "contrastive skip-layer guidance: the chosen blocks skipped in an extra conditional pass"
    perturbation: ClassVar[str] = SKIP

    def check(self):
        super().check()
        if self.weights is not None:
            if len(self.weights) != len(self.layers):
                raise ValueError(f"{self.name}: {len(self.weights)} weights for {len(self.layers)} layers")
            if sum(self.weights) <= 0:
                raise ValueError(f"{self.name}: layer weights must have a positive sum")

    @property
    def use_cfg(self) -> bool:
        return unbound_check(self).cfg_scale != 1.0

    @property
    def variant(self) -> str | None:
        """How the layers are combined (``base.layer_variant``): ``single`` (one layer), ``joint`` (several
        skipped in one pass), ``uniform`` / ``weighted`` (a pass per layer, averaged with equal / unequal weights);
        ``None`` while the layers are the family's default, not yet bound."""
        if not self.layers:
            return None
        if self.weights is None:
            return "single" if len(self.layers) == 1 else "joint"
        return "uniform" if len(set(self.weights)) == 1 else "weighted"

    def perturbed_sets(self) -> list[tuple[str, ...]]:
        return [self.layers] if self.weights is None else [(layer,) for layer in self.layers]

    def conditions(self, request):
        cond = {"cond": request.prompt}
        return {"uncond": request.negative_prompt, **cond} if self.use_cfg else cond

    def degenerate(self, num_steps, conditions):
        base = "cfg" if self.use_cfg else "none"
        if self.scale == 0:
            return f"scale 0: equals {base}"
        return self.empty_window(num_steps, base)

    def passes(self, step):
        base = {"uncond": Pass("uncond"), "cond": Pass("cond")} if self.use_cfg else {"cond": Pass("cond")}
        if not self.active(step):
            return base
        perturbed = {f"cond_perturbed{k}": Pass.of("cond", **{self.perturbation: s})
                     for k, s in enumerate(self.perturbed_sets())}
        return base | perturbed

    def combine(self, preds, step):
        c = preds["cond"]
        v = cfg(preds["uncond"], c, self.cfg_scale) if self.use_cfg else c
        perturbed = [preds[name] for name in preds if name.startswith("cond_perturbed")]
        if perturbed:
            c_p = perturbed[0] if self.weights is None else weighted_mean(perturbed, self.weights)
            v = v + perturbation_term(c, c_p, self.scale)
        return step.postprocess_cfg(v, c) if self.use_cfg else v


@dataclass(frozen=True)
class SLG(CSLG):
    """diffusers' skip-layer guidance for SD3 (``skip_guidance_layers``): CSLG with its default layers 7, 8, 9,
    scale 2.8 and window 0.01-0.2, applied as diffusers does: in the strict window ``N*start < i < N*stop`` and
    only with ``w > 1`` (else no guidance at all: ``v = c``)."""

    layers: tuple[str, ...] = option(("7", "8", "9"), "blocks skipped (diffusers' SD3.5-medium recipe: 7 8 9)")
    scale: float = option(2.8, "skip-layer guidance scale (diffusers: 2.8)", low=0)
    cfg_scale: float | None = cfg_scale_option()
    start: float = start_option(0.01)
    stop: float = stop_option(0.2)
    weights: tuple[float, ...] | None = None  # not an option of SLG: all layers skipped in one pass
    name = "slg"
    title = "diffusers' SD3 skip-layer guidance recipe (strict window, only with CFG)"
    window_rule = "strict"

    @property
    def use_cfg(self) -> bool:
        return unbound_check(self).cfg_scale > 1  # as diffusers' do_classifier_free_guidance

    def active(self, step) -> bool:
        """diffusers: only with CFG (``w > 1``), in the strict window ``N*start < i < N*stop``."""
        return self.cfg_scale > 1 and super().active(step)

    def degenerate(self, num_steps, conditions):
        if self.cfg_scale <= 1:
            return f"cfg scale {self.cfg_scale:g} <= 1: diffusers applies no guidance at all, equals none"
        return super().degenerate(num_steps, conditions)
