"""Attention inside chosen blocks, at the one place every family's attention goes through:
``torch.nn.functional.scaled_dot_product_attention`` (diffusers' default processors and its native
attention backend call it with ``[B, heads, L, d]`` queries, keys and values, after q/k norms and RoPE).

While a chosen block's attention module runs, a ``torch.overrides.TorchFunctionMode`` entered by hooks on that
module sends its SDPA calls to an ``SDPAHandler`` (nothing is replaced process-wide: other modules, threads and
callers see torch's own function), which can

- perturb: ``identity`` makes every image query attend only to itself among the image keys (text keys
  stay visible in joint attention, as diffusers' ``PAGJointAttnProcessor2_0`` masks it; a self-attention
  then returns its values, as ``PAGIdentitySelfAttnProcessor2_0``);
- record: head-averaged probabilities of the image queries, image->text ("cross") and image->image
  ("self"), each row renormalised, in chunks of queries so the full matrix never exists at once. A sink
  with ``per_head`` renormalises each head's rows before the heads are averaged (as a UNet's separate
  cross- and self-attention softmaxes do, S-CFG's reference code); one with ``per_layer`` also keeps
  each block's maps.

The block's output is exactly what its own processor returns when nothing is perturbed. Only the native
SDPA path is routed; a processor that computes attention otherwise is caught (the handler saw no call), unless the
family's adapter describes that attention with an ``AttentionKernel`` (``AttentionLayout.kernel``: SANA's linear
attention), whose module output is then replaced (identity) or read (record) by the same hooks.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Protocol, Sequence

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

from ..families.layout import AttentionLayout

# float32 logits per chunk of queries: small on CPU (cache-sized chunks run ~3x faster), large on GPU
CHUNK_ELEMENTS = 2**20
CHUNK_ELEMENTS_GPU = 2**26

_SDPA = torch._C._nn.scaled_dot_product_attention  # what torch.nn.functional exports under that name
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale")


class SDPARoute(TorchFunctionMode):
    """While entered (in this thread), ``scaled_dot_product_attention`` calls go to ``handler(sdpa, **arguments)``;
    every other torch function runs as is."""

    def __init__(self, handler):
        super().__init__()
        self.handler = handler

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is _SDPA:
            return self.handler(func, **dict(zip(_SDPA_ARGS, args)), **kwargs)
        return func(*args, **kwargs)


class AttentionKernel(Protocol):
    """An attention module's computation where it does not call SDPA, given the module and its call's arguments."""

    def identity(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        """The module's output with identity attention (each query's output is its own value)."""

    def queries_keys(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The queries ``[b, H, n, d]`` and keys ``[b, H, L, d]`` that ``head_probs`` takes."""

    def head_probs(self, q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                   mask: torch.Tensor | None = None) -> torch.Tensor:
        """Each head's attention probabilities ``[b, H, n, L]``, in float32."""


@dataclass
class AttentionMaps:
    """Head- and block-averaged probabilities of the image queries of one pass.

    ``cross``: ``[N, T]`` image->text, each row renormalised over the text keys.
    ``self_attn``: ``[N, N]`` image->image, each row renormalised over the image keys.
    ``cross_layers``, ``self_layers``: ``[n_blocks, N, T]`` and ``[n_blocks, N, N]``, the maps of each block
    (in call order) before the average, where the sink keeps them (``per_layer``); else ``None``.
    """

    cross: torch.Tensor
    self_attn: torch.Tensor
    cross_layers: torch.Tensor | None = None
    self_layers: torch.Tensor | None = None


def head_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
    """``softmax(q kᵀ · scale + mask)`` of every head in float32: ``q [b, H, n, d]``, ``k [b, H, L, d]`` -> ``[b, H, n, L]``.

    ``scale`` defaults to ``1/√d``, as ``scaled_dot_product_attention``.
    """
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    logits = torch.matmul(q.float() * scale, k.float().transpose(-1, -2))
    if mask is not None:
        logits = logits + mask
    return logits.softmax(dim=-1)


def attention_probs(q: torch.Tensor, k: torch.Tensor, scale: float | None = None,
                    mask: torch.Tensor | None = None) -> torch.Tensor:
    """Head-averaged ``softmax(q kᵀ · scale + mask)`` in float32: ``q [b, H, n, d]``, ``k [b, H, L, d]`` -> ``[b, n, L]``.

    ``scale`` defaults to ``1/√d``, as ``scaled_dot_product_attention``.
    """
    return head_probs(q, k, scale, mask).mean(dim=1)


def split_roles(probs: torch.Tensor, text: slice, image: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The image->text and image->image blocks of ``probs`` ``[..., L]``, each row renormalised to sum 1."""
    return renormalise(probs[..., text]), renormalise(probs[..., image])


def renormalise(probs: torch.Tensor) -> torch.Tensor:
    """Rows of ``probs`` divided by their sums."""
    return probs / probs.sum(-1, keepdim=True).clamp_min(torch.finfo(probs.dtype).tiny)


def _additive(mask: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    if mask is None or mask.dtype != torch.bool:
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))


@dataclass
class AttentionSink:
    """Sums the recorded maps of each pass over the blocks of one step; ``take`` returns their means.

    ``per_head``: the handlers renormalise each head's image->text and image->image rows before averaging the
    heads (default: they average the heads' full rows, then renormalise). ``per_layer``: ``take`` also returns
    each block's maps (``AttentionMaps.cross_layers``, ``self_layers``).
    """

    sums: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    per_head: bool = False
    per_layer: bool = False
    layers: dict[str, dict[str, list[torch.Tensor]]] = field(default_factory=dict)

    def add(self, name: str, role: str, maps: torch.Tensor) -> None:
        sums, counts = self.sums.setdefault(name, {}), self.counts.setdefault(name, {})
        sums[role] = sums[role] + maps if role in sums else maps
        counts[role] = counts.get(role, 0) + 1
        if self.per_layer:
            self.layers.setdefault(name, {}).setdefault(role, []).append(maps)

    def take(self) -> dict[str, AttentionMaps]:
        """The block-averaged maps of every recorded pass since the last ``take``; clears."""
        out = {}
        for name, sums in self.sums.items():
            if set(sums) != {"cross", "self"}:
                raise RuntimeError(f"pass {name!r}: the recorded blocks gave {sorted(sums)} maps, need cross and self")
            means = [sums[r] / self.counts[name][r] for r in ("cross", "self")]
            stacks = [None, None]
            if self.per_layer:
                layers = self.layers[name]
                if len(layers["cross"]) != len(layers["self"]):
                    raise RuntimeError(f"pass {name!r}: {len(layers['cross'])} cross and {len(layers['self'])} self "
                                       "maps: per-layer maps need one of each per block")
                stacks = [torch.stack(layers[r]) for r in ("cross", "self")]
            out[name] = AttentionMaps(*means, *stacks)
        self.sums, self.counts, self.layers = {}, {}, {}
        return out


@dataclass
class SDPAHandler:
    """What happens to the SDPA calls of one attention module during one block call.

    ``n_image``: image tokens in the sequence; ``identity``: identity attention among image tokens;
    ``record``: ``(batch row, pass name)`` pairs whose maps go to ``sink``.
    """

    layout: AttentionLayout
    n_image: int
    identity: bool = False
    record: Sequence[tuple[int, str]] = ()
    sink: AttentionSink | None = None
    calls: int = 0

    def image_slice(self, length: int) -> slice:
        if self.layout.role == "cross":
            raise ValueError("a cross-attention call has no image keys")
        if self.layout.role == "self" or not self.layout.text_first:
            return slice(0, self.n_image)
        return slice(length - self.n_image, length)

    def identity_mask(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """Additive ``[L, L]`` mask: image queries see only themselves among the image keys."""
        length = key.shape[-2]
        image = self.image_slice(length)
        mask = torch.zeros(length, length, dtype=query.dtype, device=query.device)
        block = torch.full((self.n_image, self.n_image), float("-inf"), dtype=query.dtype, device=query.device)
        mask[image, image] = block.fill_diagonal_(0.0)
        return mask

    def __call__(self, sdpa, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        self.calls += 1
        mask = _additive(attn_mask, query.dtype)
        if self.identity:
            identity = self.identity_mask(query, key)
            mask = identity if mask is None else mask + identity
        if self.record:
            self.add_maps(query, key, mask, scale)
        return sdpa(query, key, value, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, scale=scale, **kwargs)

    def kernel_output(self, module: nn.Module, args: tuple, kwargs: dict[str, Any], output: torch.Tensor
                      ) -> torch.Tensor:
        """What a module with an ``AttentionKernel`` returns under this handler: its maps recorded, its output
        replaced by the kernel's identity attention where perturbed."""
        self.calls += 1
        kernel = self.layout.kernel
        if self.record:
            self.add_maps(*kernel.queries_keys(module, args, kwargs), None, None, probs=kernel.head_probs)
        return kernel.identity(module, args, kwargs) if self.identity else output

    @torch.no_grad()
    def add_maps(self, query, key, mask, scale, probs=head_probs) -> None:
        rows = [r for r, _ in self.record]
        q, k = query[rows], key[rows]
        length = k.shape[-2]
        image = slice(None) if self.layout.role == "cross" else self.image_slice(q.shape[-2])
        q = q[:, :, image]
        if mask is not None:
            mask = mask.float()
            while mask.ndim < 4:
                mask = mask[None]
            if mask.shape[0] > 1:
                mask = mask[rows]
            if mask.shape[-2] > 1:
                mask = mask[..., image, :]
        budget = CHUNK_ELEMENTS if k.device.type == "cpu" else CHUNK_ELEMENTS_GPU
        n = q.shape[-2]
        step = max(1, budget // (k.shape[0] * k.shape[1] * length))
        chunks = [(q[:, :, i : i + step], None if mask is None else (mask if mask.shape[-2] == 1 else mask[..., i : i + step, :]))
                  for i in range(0, n, step)]
        if self.layout.role == "joint":
            image_keys = self.image_slice(length)
            text_keys = slice(0, length - self.n_image) if self.layout.text_first else slice(self.n_image, length)

            def split(probs):
                return dict(zip(("cross", "self"), split_roles(probs, text_keys, image_keys)))
        else:
            def split(probs):
                return {self.layout.role: renormalise(probs)}

        if self.sink is not None and self.sink.per_head:  # renormalise each head's rows, then average the heads
            pieces = [{role: x.mean(dim=1) for role, x in split(probs(qc, k, scale, mc)).items()} for qc, mc in chunks]
            parts = {role: torch.cat([p[role] for p in pieces], dim=1) for role in pieces[0]}
        else:
            parts = split(torch.cat([probs(qc, k, scale, mc).mean(dim=1) for qc, mc in chunks], dim=1))
        for j, (_, name) in enumerate(self.record):
            for role, maps in parts.items():
                self.sink.add(name, role, maps[j])


class AttentionControl:
    """Forward hooks on the attention modules of chosen blocks; the executor says, per block call, which
    handlers are active (``activate``). While an active module runs, an ``SDPARoute`` is entered; the hooks are
    removed on exit."""

    def __init__(self, calls: dict[str, list[tuple[nn.Module, AttentionLayout]]]):
        self.calls = calls
        self.active: dict[int, SDPAHandler] = {}
        self._routes: list[SDPARoute | None] = []

    def _pre(self, module, args, kwargs):
        handler = self.active.get(id(module))
        route = SDPARoute(handler) if handler is not None and handler.layout.kernel is None else None
        if route is not None:
            route.__enter__()
        self._routes.append(route)

    def _post(self, module, args, kwargs, output):
        route = self._routes.pop()
        if route is not None:
            route.__exit__(None, None, None)
        handler = self.active.get(id(module))
        if handler is not None and handler.layout.kernel is not None:
            return handler.kernel_output(module, args, kwargs, output)
        return None

    @contextmanager
    def installed(self) -> Iterator[AttentionControl]:
        hooks = []
        try:
            for calls in self.calls.values():
                for module, _ in calls:
                    hooks.append(module.register_forward_pre_hook(self._pre, with_kwargs=True))
                    hooks.append(module.register_forward_hook(self._post, with_kwargs=True, always_call=True))
            yield self
        finally:
            for hook in hooks:
                hook.remove()

    @contextmanager
    def activate(self, layer: str, n_image: int, identity: bool, record: Sequence[tuple[int, str]],
                 sink: AttentionSink | None) -> Iterator[None]:
        """Handlers for the attention calls of block ``layer`` during one call of it."""
        handlers = []
        for module, layout in self.calls.get(layer, ()):
            handler = SDPAHandler(
                layout, n_image,
                identity=identity and layout.role != "cross",
                record=record if sink is not None else (),
                sink=sink,
            )
            if handler.identity or handler.record:
                self.active[id(module)] = handler
                handlers.append(handler)
        try:
            yield
        finally:
            self.active.clear()
        if identity and not any(h.identity and h.calls for h in handlers):
            raise RuntimeError(
                f"identity attention in block {layer}: its attention did not call torch's scaled_dot_product_attention "
                "(use diffusers' native attention backend)"
            )
