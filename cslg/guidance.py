"""Guidance methods. Each method says which conditioning rows it needs, which passes it runs at a step,
and combines their predictions with a pure function. Velocities: u = unconditional/negative, c = cond.

Scale convention (both families): ``v = u + w (c - u) + s (c - c_skip)``.
With ``w = 1`` (no CFG, e.g. FLUX.1-dev with its distilled guidance) this is ``v = c + s (c - c_skip)``
and no unconditional pass is run. The upstream FLUX code wrote ``c_skip + s' (c - c_skip)``: ``s = s' - 1``,
so upstream FLUX "scale 2.0" is ``s = 1.0`` here.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from typing import ContextManager, Sequence

import torch

from .denoiser import Pass

# diffusers' StableDiffusion3Pipeline defaults for skip-layer guidance (SD3.5-medium recipe).
SLG_LAYERS = ("7", "8", "9")
SLG_SCALE = 2.8
SLG_START = 0.01
SLG_STOP = 0.2


# Pure formulas ---------------------------------------------------------------------------------------
def cfg(u: torch.Tensor, c: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: ``v = u + w (c - u)``."""
    return u + w * (c - u)


def skip_term(c: torch.Tensor, c_skip: torch.Tensor, s: float) -> torch.Tensor:
    """Skip-layer guidance term: ``s (c - c_skip)``."""
    return s * (c - c_skip)


def weighted_skip(c_skips: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted multi-layer skip prediction: ``c_skip = Σ_k a_k c_skip(k) / Σ_k a_k``."""
    total = sum(weights)
    return sum(a * x for a, x in zip(weights, c_skips)) / total


def in_window(step: int, num_steps: int, start: float, stop: float) -> bool:
    """diffusers' SD3 window for skip-layer guidance: ``N*start < step < N*stop`` (strict)."""
    return num_steps * start < step < num_steps * stop


def check_window(name: str, start: float, stop: float) -> None:
    """A step window is two fractions of the steps with ``0 <= start <= stop <= 1``."""
    if not 0.0 <= start <= stop <= 1.0:
        raise ValueError(f"{name}: need 0 <= start <= stop <= 1, got {start}, {stop}")


# Methods ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What a method may condition on: the prompt, the negative prompt and optional concepts."""

    prompt: str
    negative_prompt: str = ""
    concepts: tuple[str, ...] = ()


class GuidanceMethod:
    """Base class: ``rows`` to encode, ``passes`` per step, ``combine`` into one velocity per latent."""

    name = "base"

    def rows(self, request: Request) -> list[str]:
        raise NotImplementedError

    def passes(self, step: int, num_steps: int, num_rows: int) -> list[Pass]:
        """The passes of step ``step`` of ``num_steps``; ``num_rows`` = ``len(self.rows(request))``."""
        raise NotImplementedError

    def combine(self, preds: torch.Tensor, step: int, num_steps: int) -> torch.Tensor:
        raise NotImplementedError

    def params(self) -> dict:
        """Every setting that shapes the image (recorded in the manifest)."""
        return {}

    def context(self, denoiser) -> ContextManager:
        """Set-up held for a whole sampling run (e.g. attention recording)."""
        return nullcontext()


@dataclass
class NoGuidance(GuidanceMethod):
    """The conditional prediction alone (SD3: guidance 1; FLUX: distilled guidance only)."""

    name = "none"

    def rows(self, request):
        return [request.prompt]

    def passes(self, step, num_steps, num_rows):
        return [Pass(0)]

    def combine(self, preds, step, num_steps):
        return preds[0:1]


@dataclass
class CFG(GuidanceMethod):
    """``v = u + w (c - u)``; on FLUX this is true CFG with the negative prompt."""

    cfg_scale: float = 7.0
    name = "cfg"

    def rows(self, request):
        return [request.negative_prompt, request.prompt]

    def passes(self, step, num_steps, num_rows):
        return [Pass(0), Pass(1)]

    def combine(self, preds, step, num_steps):
        return cfg(preds[0:1], preds[1:2], self.cfg_scale)

    def params(self):
        return {"cfg_scale": self.cfg_scale}


@dataclass
class SkipLayerGuidance(GuidanceMethod):
    """SLG / CSLG: ``v = u + w (c - u) + s (c - c_skip)`` inside the step window, CFG (or ``c``) outside.

    ``layers`` are skipped together in one pass; with ``weights`` each layer gets its own skip pass and
    ``c_skip`` is their weighted mean (upstream "MSG"). ``cfg_scale = 1`` drops the unconditional pass.
    """

    layers: tuple[str, ...]
    scale: float
    cfg_scale: float = 1.0
    start: float = 0.0
    stop: float = 1.0
    weights: tuple[float, ...] | None = None
    name: str = "cslg"

    def __post_init__(self):
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

    def skip_sets(self) -> list[frozenset[str]]:
        if self.weights is None:
            return [frozenset(self.layers)]
        return [frozenset([layer]) for layer in self.layers]

    def rows(self, request):
        return [request.negative_prompt, request.prompt] if self.use_cfg else [request.prompt]

    def passes(self, step, num_steps, num_rows):
        c = 1 if self.use_cfg else 0
        base = [Pass(0), Pass(1)] if self.use_cfg else [Pass(0)]
        if not in_window(step, num_steps, self.start, self.stop):
            return base
        return base + [Pass(c, skip) for skip in self.skip_sets()]

    def combine(self, preds, step, num_steps):
        n = 2 if self.use_cfg else 1
        c = preds[n - 1 : n]
        v = cfg(preds[0:1], c, self.cfg_scale) if self.use_cfg else c
        if preds.shape[0] == n:
            return v
        skips = [preds[k : k + 1] for k in range(n, preds.shape[0])]
        c_skip = skips[0] if self.weights is None else weighted_skip(skips, self.weights)
        return v + skip_term(c, c_skip, self.scale)

    def params(self):
        p = {"cfg_scale": self.cfg_scale, "cslg_scale": self.scale, "layers": list(self.layers),
             "start": self.start, "stop": self.stop}
        if self.weights is not None:
            p["layer_weights"] = list(self.weights)
        return p
