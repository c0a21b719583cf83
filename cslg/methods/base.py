"""The guidance protocol. A method is stateless configuration (a frozen dataclass: equal objects mean equal
settings) that names the conditioning rows it needs, the passes it runs at a step, and combines their
predictions, given by name, with a pure formula. Per-request data (prompts, concepts) and per-step data
(step index, timestep, recorded attention, token layout) travel in arguments.

Velocities: u = unconditional / negative, c = conditional. Scale convention of every skip or perturbation
method: ``v = u + w (c - u) + s (c - c_perturbed)``; with ``w = 1`` no unconditional pass runs.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import torch

from ..attention import AttentionMaps, AttentionSink
from ..executor import Pass
from ..families.base import Adapter, LatentLayout, TextRoles
from ..options import LAYER_COMBINATIONS


# Pure formulas ---------------------------------------------------------------------------------------
def cfg(u: torch.Tensor, c: torch.Tensor, w: float) -> torch.Tensor:
    """Classifier-free guidance: ``v = u + w (c - u)``."""
    return u + w * (c - u)


def perturbation_term(c: torch.Tensor, c_perturbed: torch.Tensor, s: float) -> torch.Tensor:
    """Skip-layer / perturbed-attention guidance term: ``s (c - c_perturbed)``."""
    return s * (c - c_perturbed)


def weighted_mean(predictions: Sequence[torch.Tensor], weights: Sequence[float]) -> torch.Tensor:
    """Weighted multi-layer skip prediction: ``c_skip = Σ_k a_k c_skip(k) / Σ_k a_k``."""
    total = sum(weights)
    return sum(a * x for a, x in zip(weights, predictions)) / total


def _at(num_steps: int, fraction: float) -> float:
    """``N * fraction``, rounded so that e.g. ``22 * (15/22)`` is 15, not 14.999999999999998."""
    return round(num_steps * fraction, 9)


def in_window(step: int, num_steps: int, start: float, stop: float) -> bool:
    """diffusers' SD3 window for skip-layer guidance: ``N*start < step < N*stop`` (strict: never step 0)."""
    return _at(num_steps, start) < step < _at(num_steps, stop)


def step_window(step: int, num_steps: int, start: float, stop: float) -> bool:
    """The toolkit's window: ``N*start <= step < N*stop`` (``0, 1``: every step)."""
    return _at(num_steps, start) <= step < _at(num_steps, stop)


def guider_window(step: int, num_steps: int, start: float, stop: float) -> bool:
    """diffusers' guider window: ``int(N*start) <= step < int(N*stop)``."""
    return int(num_steps * start) <= step < int(num_steps * stop)


def check_window(name: str, start: float, stop: float) -> None:
    """A step window is two fractions of the steps with ``0 <= start <= stop <= 1``."""
    if not 0.0 <= start <= stop <= 1.0:
        raise ValueError(f"{name}: need 0 <= start <= stop <= 1, got {start}, {stop}")


def canonical_layers(layers: Sequence[str | int]) -> tuple[str, ...]:
    """Layer names as canonical strings (``5`` -> ``"5"``, ``"S3"`` -> ``"s3"``); validated against a model
    by ``Adapter.resolve_layers``."""
    if isinstance(layers, (str, int)):
        layers = [layers]
    return tuple(str(layer).strip().lower() for layer in layers)


def layer_sets(layers: Sequence[str], combinations: str) -> list[tuple[str, ...]]:
    """``given``: the layers as one set; ``all``: every non-empty subset (by size, then order)."""
    if combinations == "given":
        return [tuple(layers)]
    if combinations == "all":
        return [c for k in range(1, len(layers) + 1) for c in itertools.combinations(layers, k)]
    raise ValueError(f"--layer-combinations must be one of {', '.join(LAYER_COMBINATIONS)}, got {combinations!r}")


def check_scale(value: float, flag: str) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{flag}: scales must be finite and non-negative, got {value}")
    return value


# The protocol ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What a method may condition on: the prompt, the negative prompt and optional concepts."""

    prompt: str
    negative_prompt: str = ""
    concepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Step:
    """One denoising step as a method sees it. ``rows``: the names of the conditioning rows; ``attention``: the recorded maps by pass name (in ``combine``,
    where the method asked for them); ``layout``: the image-token layout of the predictions; ``roles``: the
    text-token roles of each conditioning row (where the method records attention); ``memory``: one mutable
    dictionary per sampling run, shared by its steps (e.g. APG's momentum average)."""

    index: int
    num_steps: int
    timestep: float = 0.0
    sigma: float | None = None
    rows: tuple[str, ...] = ()
    layout: LatentLayout | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    attention: Mapping[str, AttentionMaps] = field(default_factory=dict)
    roles: Mapping[str, TextRoles] = field(default_factory=dict)


class Method:
    """Base class of the guidance methods (subclasses are frozen dataclasses)."""

    name: ClassVar[str] = "base"

    def rows(self, request: Request) -> dict[str, str]:
        """The conditioning rows: name -> prompt text."""
        raise NotImplementedError

    def passes(self, step: Step) -> dict[str, Pass]:
        """The passes of ``step``, by name."""
        raise NotImplementedError

    def combine(self, preds: Mapping[str, torch.Tensor], step: Step) -> torch.Tensor:
        """One prediction from the passes' predictions (by name)."""
        raise NotImplementedError

    def degenerate(self, num_steps: int, rows: Mapping[str, str]) -> str | None:
        """Why these settings make the method equal to another one for ``num_steps`` steps and these conditioning
        rows (an empty step window, a zero scale, no concepts ...), or ``None``. Warned about and recorded."""
        return None

    def referenced_layers(self) -> tuple[str, ...]:
        """Every layer name the method refers to (validated against the model before the first step)."""
        return ()

    def recorded_attention(self, adapter: Adapter) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """``(layers, pass names)`` whose image-query attention ``combine`` needs in ``step.attention``."""
        return None

    def attention_sink(self) -> AttentionSink:
        """Where the attention of ``recorded_attention`` goes each step; its options say how it is recorded."""
        return AttentionSink()

    def params(self) -> dict[str, Any]:
        """Every setting that shapes the image (recorded in the manifest)."""
        return {}

    @classmethod
    def from_grid(cls, s) -> list[Method]:
        """Every instance of this method in a grid with settings ``s`` (a ``cslg.grid.GridSettings``)."""
        raise NotImplementedError
