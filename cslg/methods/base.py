"""The guidance protocol. A method is stateless configuration (a frozen dataclass whose settings are declared
options, ``cslg.methods.schema``: equal objects mean equal settings) that names the conditionings it needs, the
passes it runs at a step, and combines their predictions, given by name, with a pure formula. Per-request data
(prompts, concepts) and per-step data (step index, timestep, recorded attention, token layout) travel in
arguments.

Velocities: u = unconditional / negative, c = conditional. Scale convention of every skip or perturbation
method: ``v = u + w (c - u) + s (c - c_perturbed)``; with ``w = 1`` no unconditional pass runs.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

import torch

from ..families.layout import LatentLayout, TextRoles
from ..guidance.attention import AttentionMaps, AttentionSink
from ..guidance.passes import Pass
from .schema import MISSING, check_value, declared, jsonable, option

if TYPE_CHECKING:
    from ..families.base import Adapter


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


# Step windows ----------------------------------------------------------------------------------------
WINDOW_RULES = ("half-open", "strict", "floor", "closed")


def in_window(step: int, num_steps: int, start: float, stop: float, rule: str = "half-open") -> bool:
    """Whether step ``step`` of ``num_steps`` lies in the window ``start``-``stop`` (fractions of the steps).

    ``half-open`` (the toolkit's): ``N*start <= i < N*stop`` (``0, 1``: every step). ``strict`` (diffusers' SD3
    skip-layer guidance): ``N*start < i < N*stop``, never step 0. ``floor`` (diffusers' guiders):
    ``int(N*start) <= i < int(N*stop)``. ``closed`` (ConceptDiffusion's warm-up / cool-down):
    ``N*start <= i <= N*stop``. ``N*x`` is rounded to 9 places, so ``22 * (15/22)`` is 15, not 14.999999999999998.
    """
    a, b = round(num_steps * start, 9), round(num_steps * stop, 9)
    if rule == "half-open":
        return a <= step < b
    if rule == "strict":
        return a < step < b
    if rule == "floor":
        return int(a) <= step < int(b)
    if rule == "closed":
        return a <= step <= b
    raise ValueError(f"window rule must be one of {', '.join(WINDOW_RULES)}, got {rule!r}")


def layer_combinations(layers: Sequence[str], mode: str) -> list[tuple[str, ...]]:
    """``given``: the layers as one set; ``all``: every non-empty subset (by size, then order)."""
    if mode == "given":
        return [tuple(layers)]
    if mode == "all":
        return [c for k in range(1, len(layers) + 1) for c in itertools.combinations(layers, k)]
    raise ValueError(f"--layer-combinations must be given or all, got {mode!r}")


def layer_variant(variant: str, layers: Sequence[str], weights: Sequence[float]) -> tuple[tuple[str, ...],
                                                                                       tuple[float, ...] | None]:
    """``(layers, weights)`` of a skip method's ``variant`` (``options.LAYER_VARIANTS``) of ranked ``layers`` (best
    first) with their ranking ``weights``: ``single``, the top layer alone; ``joint``, all skipped in one pass;
    ``uniform``, one pass per layer averaged with weights ``1/k``; ``weighted``, one pass per layer with ``weights``."""
    k = len(layers)
    if len(weights) != k:
        raise ValueError(f"{k} layers but {len(weights)} weights")
    table = {"single": (layers[:1], None), "joint": (layers, None), "uniform": (layers, [1 / k] * k),
             "weighted": (layers, weights)}
    if variant not in table:
        raise ValueError(f"layer variant must be one of {', '.join(table)}, got {variant!r}")
    chosen, a = table[variant]
    return tuple(chosen), None if a is None else tuple(a)


# Shared option declarations ------------------------------------------------------------------------------
def cfg_scale_option(default: float | None = None) -> Any:
    """The CFG scale every CFG-based method shares (one flag, ``--cfg-scales``)."""
    return option(default, "CFG scale w (v = u + w (c - u); 1: no negative-prompt pass); default: the family's own, "
                  "its diffusers pipeline's default (SD3 7, PixArt 4.5, Qwen-Image 4, FLUX.1 1)", low=0, axis=True,
                  flag="--cfg-scales", family_default="default_cfg_scale")


def start_option(default: float = 0.0) -> Any:
    return option(default, "first step of the window, as a fraction of the steps", low=0, high=1)


def stop_option(default: float = 1.0) -> Any:
    return option(default, "end of the window, as a fraction of the steps", low=0, high=1)


def unbound_check(method: Method) -> Method:
    """``method``, or ``ValueError`` when an option it needs still waits for its family default (``Method.bind``)."""
    missing = [d.name for d in declared(type(method)) if d.spec.family_default and getattr(method, d.name) is None]
    if missing:
        raise ValueError(f"{method.name}: {', '.join(missing)} defaults to the model family's own: give it, or bind "
                         "the method to a model first (method.bind(cslg.adapter_for(pipe)))")
    return method


# The protocol ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Request:
    """What a method may condition on: the prompt, the negative prompt and optional concepts."""

    prompt: str
    negative_prompt: str = ""
    concepts: tuple[str, ...] = ()


def identity_postprocess(v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    return v


@dataclass(frozen=True)
class Step:
    """One denoising step as a method sees it. ``conditions``: the names of the encoded conditionings;
    ``attention``: the recorded maps by pass name (in ``combine``, where the method asked for them); ``layout``: the
    image-token layout of the predictions; ``roles``: the text-token roles of each conditioning (where the method
    records attention); ``memory``: one mutable dictionary per sampling run, shared by its steps (e.g. APG's
    momentum average); ``postprocess_cfg(v, c)``: the family's post-processing of a prediction that combines a
    negative-prompt pass (``Adapter.postprocess_cfg``), which such methods apply to what they return."""

    index: int
    num_steps: int
    timestep: float = 0.0
    sigma: float | None = None
    conditions: tuple[str, ...] = ()
    layout: LatentLayout | None = None
    memory: dict[str, Any] = field(default_factory=dict)
    attention: Mapping[str, AttentionMaps] = field(default_factory=dict)
    roles: Mapping[str, TextRoles] = field(default_factory=dict)
    postprocess_cfg: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] = identity_postprocess


class Method:
    """Base class of the guidance methods (subclasses are frozen dataclasses with declared options).

    ``window_rule``: how the ``start``/``stop`` options of a windowed method are read (``in_window``).
    """

    name: ClassVar[str] = "base"
    title: ClassVar[str] = ""  # one line for help texts
    window_rule: ClassVar[str] = "half-open"

    def __post_init__(self):
        for d in declared(type(self)):
            object.__setattr__(self, d.name, check_value(f"{self.name}: {d.name}", d, getattr(self, d.name)))
        self.check()

    def check(self) -> None:
        """Checks across options (each option is checked on its own before); a bad combination raises
        ``ValueError`` naming the arguments."""
        start, stop = getattr(self, "start", None), getattr(self, "stop", None)
        if start is not None and stop is not None and start > stop:
            raise ValueError(f"{self.name}: need start <= stop (fractions of the steps), got {start:g}, {stop:g}")

    # What a step runs ----------------------------------------------------------------------------------
    def conditions(self, request: Request) -> dict[str, str]:
        """The conditionings to encode: name -> prompt text."""
        raise NotImplementedError

    def passes(self, step: Step) -> dict[str, Pass]:
        """The passes of ``step``, by name."""
        raise NotImplementedError

    def combine(self, preds: Mapping[str, torch.Tensor], step: Step) -> torch.Tensor:
        """One prediction from the passes' predictions (by name)."""
        raise NotImplementedError

    def active(self, step: Step) -> bool:
        """Whether the method's own guidance applies at ``step`` (its step window; always without one)."""
        if not hasattr(self, "start"):
            return True
        return in_window(step.index, step.num_steps, self.start, self.stop, self.window_rule)

    def degenerate(self, num_steps: int, conditions: Mapping[str, str]) -> str | None:
        """Why these settings make the method equal to another one for ``num_steps`` steps and these
        conditionings (an empty step window, a zero scale, no concepts ...), or ``None``. Warned about and
        recorded in the manifest."""
        return None

    def empty_window(self, num_steps: int, equals: str) -> str | None:
        """``degenerate``'s reason when the step window of a windowed method holds no step of ``num_steps`` (no
        step is ``active``): the method equals ``equals``."""
        if any(self.active(Step(i, num_steps)) for i in range(num_steps)):
            return None
        return f"the step window {self.start:g}-{self.stop:g} holds no step of {num_steps}: equals {equals}"

    def recorded_attention(self, adapter: Adapter) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
        """``(layers, pass names)`` whose image-query attention ``combine`` needs in ``step.attention``."""
        return None

    def attention_sink(self) -> AttentionSink:
        """Where the attention of ``recorded_attention`` goes each step; its options say how it is recorded."""
        return AttentionSink()

    # Settings ------------------------------------------------------------------------------------------
    def referenced_layers(self) -> tuple[str, ...]:
        """Every layer name the method's options name (checked against the model by ``bind``)."""
        names = [n for d in declared(type(self)) if d.kind == "layers" for n in getattr(self, d.name) or ()]
        return tuple(dict.fromkeys(names))

    def bind(self, adapter: Adapter) -> Method:
        """These settings for ``adapter``'s model: every ``None`` option with a family default filled in from the
        adapter, every layer checked (``LayerError`` naming the valid range)."""
        changes = {}
        for d in declared(type(self)):
            if getattr(self, d.name) is None and d.spec.family_default:
                value = getattr(adapter, d.spec.family_default)
                value = value() if callable(value) else value
                if value is None or (d.kind == "layers" and not value):
                    raise ValueError(f"{self.name}: {d.name} is not given and {adapter.name} models have no default "
                                     f"(give {d.name}=..., or {d.flag(self.name)} in a grid)")
                changes[d.name] = value
        method = replace(self, **changes) if changes else self
        adapter.resolve_layers(method.referenced_layers())
        return method

    def to_dict(self) -> dict[str, Any]:
        """``{"method": name, option: value, ...}`` (JSON types); ``Method.from_dict`` inverts it."""
        return {"method": self.name, **{d.name: jsonable(getattr(self, d.name)) for d in declared(type(self))}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Method:
        """The method ``data`` describes (``to_dict``'s format; missing options take their defaults). On ``Method``
        itself the class is looked up by ``data["method"]`` in ``cslg.methods.REGISTRY``."""
        from . import REGISTRY

        data = dict(data)
        name = data.pop("method", None if cls is Method else cls.name)
        target = REGISTRY.get(name) if cls is Method else cls
        if target is None or name != target.name:
            raise ValueError(f"method {name!r}: expected one of {', '.join(REGISTRY)}" if cls is Method
                             else f"{cls.__name__}.from_dict: got method {name!r}, expected {cls.name!r}")
        options = {d.name for d in declared(target)}
        if unknown := sorted(set(data) - options):
            raise ValueError(f"{target.name}: unknown option(s) {', '.join(unknown)}; options: {', '.join(options)}")
        return target(**data)

    @property
    def variant(self) -> str | None:
        """The name of this setting's kind within the method, for manifests and labels (``None``: no kinds)."""
        return None

    def params(self) -> dict[str, Any]:
        """Every setting that shapes the image (recorded in the manifest): the options."""
        data = self.to_dict()
        del data["method"]
        return data


__all__ = ["MISSING", "Method", "Request", "Step", "cfg", "in_window", "layer_combinations", "layer_variant",
           "perturbation_term", "weighted_mean"]
