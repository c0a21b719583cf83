"""Any cslg method as a guider of diffusers' modular pipelines (``diffusers.guiders.BaseGuidance``)::

    pipe.update_components(guider=cslg.diffusers_guider(cslg.CSLG(layers=[5], scale=2.0), pipe))

A modular pipeline's denoise step asks the guider for its batches (``prepare_inputs``), runs the transformer once
per batch between ``prepare_models`` and ``cleanup_models``, and combines the predictions (``__call__``). Here the
batches are the method's passes at that step: the conditional ones from the prompt's embeddings, the
unconditional ones from the negative prompt's; a pass's perturbations are hooks on its blocks while its batch runs
(a skipped block returns its inputs in its own output order, ``SkipBlockHook``; identity attention routes the
block's SDPA calls, ``cslg.guidance.attention``), removed by name afterwards so a user's hooks keep working. The
prediction is the method's own ``combine``.

Each pass is its own forward (no shared prefixes as in ``cslg.generate``). The family's post-processing of a
guided prediction is the modular denoise step's job, as for diffusers' own guiders: Qwen-Image's rescales every
guider output to the norm of the conditional prediction, also for methods without a negative-prompt pass (CSLG
with ``cfg_scale=1``), where ``cslg.generate`` does not, and a zero velocity (CFG-Zero*'s first steps) turns into
NaN there. Methods that record attention (S-CFG) or encode more than the prompt and the negative prompt
(ConceptDiffusion) cannot run as guiders.
"""

from __future__ import annotations

import warnings
from contextlib import ExitStack, contextmanager
from typing import Any, Callable, ContextManager, Iterator

import torch
import torch.nn as nn
from diffusers.configuration_utils import register_to_config
from diffusers.guiders import BaseGuidance
from diffusers.guiders.guider_utils import GuiderOutput
from diffusers.hooks import ModelHook

from ..families import adapter_for_transformer
from ..families.base import Adapter, BlockList
from ..methods.base import Method, Request, Step, unbound_check
from .attention import AttentionControl
from .passes import IDENTITY_ATTENTION, SKIP, Pass
from .sampling import DegenerateMethodWarning
from .skip import hooked, hooked_blocks, skip_hooks

# the modular pipelines' guider inputs are (conditional, unconditional) pairs
TUPLE_INDEX = {"cond": 0, "uncond": 1}
IDENTITY_HOOK = "cslg_identity_attention"
PASS_HOOK = "cslg_guider_pass"
# what a guider never sees: the prompts (a method's conditionings are named alike for every request)
PROBE = Request("a prompt", "", ("a concept",))


class IdentityAttentionHook(ModelHook):
    """Identity attention in a block while it runs (``AttentionControl`` routes its attention modules' SDPA)."""

    def __init__(self, adapter: Adapter, control: AttentionControl, layer: str, convention: BlockList):
        super().__init__()
        self.adapter, self.control, self.layer, self.convention = adapter, control, layer, convention

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        n_image = self.adapter.image_tokens_of_call(self.convention, args, kwargs)
        with self.control.activate(self.layer, n_image, identity=True, record=(), sink=None):
            return self.fn_ref.original_forward(*args, **kwargs)


class NextCallHook(ModelHook):
    """``context()`` held around the next call of the module alone (later calls run as they are), so a pass's block
    hooks exist only during its own forward, even when that forward raises."""

    def __init__(self, context: Callable[[], ContextManager]):
        super().__init__()
        self.context, self.used = context, False

    def new_forward(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        if self.used:
            return self.fn_ref.original_forward(*args, **kwargs)
        self.used = True
        with self.context():
            return self.fn_ref.original_forward(*args, **kwargs)


@contextmanager
def perturbed(adapter: Adapter, current: Pass) -> Iterator[None]:
    """The blocks of ``adapter``'s transformer perturbed as the pass ``current`` says, while the context is held."""
    identity = set(current.layers(IDENTITY_ATTENTION))
    hooks = skip_hooks(adapter, current.layers(SKIP))
    with ExitStack() as stack:
        if identity:
            control = AttentionControl({name: adapter.attention_calls(block, bl) for name, block, bl in adapter.blocks
                                        if name in identity})
            stack.enter_context(control.installed())
            hooks += [(block, IdentityAttentionHook(adapter, control, name, bl), IDENTITY_HOOK)
                      for name, block, bl in adapter.blocks if name in identity]
        stack.enter_context(hooked_blocks(adapter.transformer, hooks))
        yield


class MethodGuider(BaseGuidance):
    """A cslg method (``method``: its ``to_dict()``) as a diffusers guider; build it with ``cslg.diffusers_guider``.
    ``enabled=False`` (or ``disable()``): the conditional prediction alone."""

    _input_predictions = list(TUPLE_INDEX)  # the method's pass names come on top (e.g. "cond_perturbed0")

    @register_to_config
    def __init__(self, method: dict[str, Any], enabled: bool = True):
        super().__init__(0.0, 1.0, enabled)
        self.method = check_guidable(Method.from_dict(method))
        self.conditions = tuple(self.method.conditions(PROBE))
        self._adapter: Adapter | None = None
        self._passes: dict[str, Pass] = {}
        self._step_state: Step | None = None
        self._memory: dict[str, Any] = {}
        self._hooks = ExitStack()

    # The step ----------------------------------------------------------------------------------------------
    def set_state(self, step: int, num_inference_steps: int, timestep: torch.Tensor) -> None:
        super().set_state(step, num_inference_steps, timestep)
        if step == 0:
            self._memory = {}  # a new sampling run
            if reason := self.method.degenerate(num_inference_steps, dict.fromkeys(self.conditions, "")):
                warnings.warn(f"{self.method.name}: {reason}", DegenerateMethodWarning, stacklevel=2)
        self._step_state = Step(step, num_inference_steps, float(timestep), None, self.conditions,
                                memory=self._memory)
        self._passes = self.method.passes(self._step_state) if self._enabled else {"cond": Pass("cond")}

    @property
    def num_conditions(self) -> int:
        """The batches of the current step; outside a step, the conditionings the method encodes (the modular
        pipelines ask before the loop whether to encode the negative prompt)."""
        return len(self._passes) if self._step_state is not None else len(self.conditions)

    @property
    def is_conditional(self) -> bool:
        return self._current().condition == "cond" if self._count_prepared else True

    def prepare_inputs(self, data: dict[str, Any]) -> list:
        self._check_negative(list(data.values()))
        return [self._prepare_batch(data, TUPLE_INDEX[p.condition], name) for name, p in self._passes.items()]

    def prepare_inputs_from_block_state(self, data: Any, input_fields: dict[str, Any]) -> list:
        self._check_negative([tuple(getattr(data, name, None) for name in field) if isinstance(field, tuple) else None
                              for field in input_fields.values()])
        return [self._prepare_batch_from_block_state(input_fields, data, TUPLE_INDEX[p.condition], name)
                for name, p in self._passes.items()]

    def prepare_models(self, denoiser: nn.Module) -> None:
        self._hooks.close()  # what a batch whose forward raised left
        self._count_prepared += 1
        adapter, current = self._adapter_of(denoiser), self._current()
        if current.perturb:
            self._hooks.enter_context(hooked(denoiser, NextCallHook(lambda: perturbed(adapter, current)), PASS_HOOK))

    def cleanup_models(self, denoiser: nn.Module) -> None:
        self._hooks.close()

    def forward(self, **preds: torch.Tensor) -> GuiderOutput:
        step, self._step_state = self._step_state, None
        pred = self.method.combine(preds, step) if self._enabled else preds["cond"]
        return GuiderOutput(pred=pred, pred_cond=preds["cond"], pred_uncond=preds.get("uncond"))

    # Helpers -----------------------------------------------------------------------------------------------
    def _current(self) -> Pass:
        return list(self._passes.values())[self._count_prepared - 1]

    def _check_negative(self, inputs: list[Any]) -> None:
        """A pass of the negative prompt needs its embeddings among the inputs, ``(conditional, unconditional)``
        pairs (SD3's modular pipeline encodes a negative prompt only when one is given)."""
        if not any(p.condition == "uncond" for p in self._passes.values()):
            return
        if not any(isinstance(x, tuple) and len(x) == 2 and x[1] is not None for x in inputs):
            raise ValueError(f"{self.method.name}: the pipeline gave the guider no negative-prompt embeddings; pass "
                             "negative_prompt to the pipeline (\"\" for none)")

    def _adapter_of(self, denoiser: nn.Module) -> Adapter:
        if self._adapter is None or self._adapter.transformer is not denoiser:
            adapter = adapter_for_transformer(denoiser)
            check_guidable(self.method, adapter)
            adapter.resolve_layers(self.method.referenced_layers())
            self._adapter = adapter
        return self._adapter


def check_guidable(method: Method, adapter: Adapter | None = None) -> Method:
    """``method``, or ``ValueError`` saying why it cannot run as a diffusers guider."""
    extra = [name for name in method.conditions(PROBE) if name not in TUPLE_INDEX]
    if extra:
        raise ValueError(f"{method.name} cannot run as a diffusers guider: it encodes {', '.join(extra)} besides the "
                         "prompt and the negative prompt, and a modular pipeline encodes only those two")
    if adapter is not None and method.recorded_attention(adapter):
        raise ValueError(f"{method.name} cannot run as a diffusers guider: its formula needs the attention maps and "
                         "the text-token roles of its prompts, which a guider never sees (use cslg.generate)")
    return unbound_check(method)


def diffusers_guider(method: Method, pipe: Any) -> MethodGuider:
    """``method`` as a guider for ``pipe`` (a diffusers ``ModularPipeline``, a ``DiffusionPipeline`` or their
    transformer): the options it leaves to the family (the CFG scale, PAG's layers) filled in from the family of
    ``pipe.transformer`` and its layers checked (``cslg.LayerError``). Give it to the pipeline with
    ``pipe.update_components(guider=...)``."""
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a guidance method such as cslg.CFG(7.0), got {method!r}")
    transformer = pipe if isinstance(pipe, nn.Module) else getattr(pipe, "transformer", None)
    if not isinstance(transformer, nn.Module):
        raise TypeError(f"pipe: expected a diffusers pipeline with a loaded transformer (or the transformer), got "
                        f"{type(pipe).__name__}")
    adapter = adapter_for_transformer(transformer)
    bound = method.bind(adapter)
    check_guidable(bound, adapter)
    return MethodGuider(method=bound.to_dict())
