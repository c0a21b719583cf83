"""The transformer of any supported pipeline as a predictor that evaluates several named *passes* in one
batched forward.

A pass (``cslg.guidance.passes.Pass``) is a conditioning, a latent and a set of perturbations per block: ``skip``
(the block is an identity for every stream, in its own output order, and is not computed) or
``identity_attention`` (in that block, image queries attend only to themselves among the image keys). Passes that
agree up to a block share one batch row ("lane") up to there; a lane is split where its passes disagree about any
perturbation. So an SLG/CSLG step costs ``2 + (fraction of blocks after the first perturbed one)`` block-passes
instead of 3. A pass may also take a block's image-token output from another pass of the same forward
(``PatchFrom``, activation patching). ``max_lanes`` caps the lanes of one forward: more passes run in several
forwards (each repeats the shared prefix of its own passes). Family specifics (embedding, block calls, un-embedding)
come from the model adapter.
"""

from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager, nullcontext
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from diffusers.utils import USE_PEFT_BACKEND, scale_lora_layers, unscale_lora_layers

from ..families.base import Adapter
from ..families.layout import Conditioning, Streams
from .attention import AttentionControl, AttentionSink
from .passes import IDENTITY_ATTENTION, SKIP, Pass, PatchFrom

INPUT = "input"  # what a block observer is called with for the streams entering the first block


BlockObserver = Callable[[str, Streams, Mapping[str, int]], None]


class Executor:
    """Runs named passes through the blocks of ``adapter``'s transformer with shared prefixes, at most ``max_lanes``
    passes per forward (``None``: all in one)."""

    def __init__(self, adapter: Adapter, max_lanes: int | None = None):
        if max_lanes is not None and (isinstance(max_lanes, bool) or not isinstance(max_lanes, int) or max_lanes < 2):
            raise ValueError(f"max_lanes: expected an integer of at least 2 or None, got {max_lanes!r}")
        self.adapter = adapter
        self.max_lanes = max_lanes
        self._control: AttentionControl | None = None

    @contextmanager
    def attention(self, layers: Sequence[str]) -> Iterator[None]:
        """Hooks on the attention of ``layers`` (needed for identity attention and attention recording)."""
        a = self.adapter
        calls = {name: a.attention_calls(block, bl) for name, block, bl in a.blocks if name in set(layers)}
        control = AttentionControl(calls)
        with control.installed():
            self._control = control
            try:
                yield
            finally:
                self._control = None

    @torch.no_grad()
    def predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        conditions: Sequence[str],
        passes: Mapping[str, Pass],
        extras: Mapping[str, Any],
        attention_kwargs: dict[str, Any] | None = None,
        record: tuple[Sequence[str], Sequence[str], AttentionSink] | None = None,
        observe: BlockObserver | None = None,
    ) -> dict[str, torch.Tensor]:
        """The prediction of every pass, by name, for ``latents`` ``[B, ...]`` at timestep ``t``.

        ``conditions``: the names of ``cond``'s rows. ``record``: ``(layers, pass names, sink)`` whose image-query
        attention is recorded. ``observe(layer, streams, lane of each pass)`` runs before the first block (``layer = INPUT``) and after every block.
        """
        _check_patches(passes)
        chunks = _chunks(passes, self.max_lanes)
        if len(chunks) > 1 and (record is not None or observe is not None):
            raise ValueError(f"max_lanes {self.max_lanes}: {len(passes)} passes that are observed or recorded must run "
                             "in one forward; raise max_lanes")
        out: dict[str, torch.Tensor] = {}
        for names in chunks:
            preds = self._predict_chunk(latents, t, cond, conditions, {n: passes[n] for n in names}, extras,
                                        attention_kwargs, record, observe)
            out.update({n: v for n, v in preds.items() if n not in out})
        return {n: out[n] for n in passes}

    def _predict_chunk(self, latents, t, cond, conditions, passes, extras, attention_kwargs, record, observe):
        a = self.adapter
        hooked = {layer for p in passes.values() for layer, kind in p.perturb if kind == IDENTITY_ATTENTION}
        if record is not None:
            hooked |= set(record[0])
        if hooked and (self._control is None or not hooked <= set(self._control.calls)):
            with self.attention(sorted(hooked)):
                return self._predict_chunk(latents, t, cond, conditions, passes, extras, attention_kwargs, record,
                                           observe)
        if hook := getattr(a.transformer, "_hf_hook", None):  # model CPU offload: bring the weights over
            hook.pre_forward(a.transformer)
        attention_kwargs = dict(attention_kwargs or {})
        lora_scale = attention_kwargs.pop("scale", 1.0)  # as diffusers' transformers apply it around their forward
        if USE_PEFT_BACKEND:
            scale_lora_layers(a.transformer, lora_scale)
        try:
            return self._predict(latents, t, cond, conditions, passes, extras, attention_kwargs or None, record,
                                 observe)
        finally:
            if USE_PEFT_BACKEND:
                unscale_lora_layers(a.transformer, lora_scale)

    def _predict(self, latents, t, cond, conditions, passes, extras, attention_kwargs, record, observe):
        a = self.adapter
        names = list(passes)
        sources = list(dict.fromkeys((passes[n].latent, passes[n].condition) for n in names))
        lane_of = {n: sources.index((passes[n].latent, passes[n].condition)) for n in names}
        streams, lane_kw, shared_kw, post_kw = a.embed(
            latents[[s[0] for s in sources]], t, cond.select([list(conditions).index(s[1]) for s in sources]),
            dict(extras), attention_kwargs,
        )
        n_image = streams.image.shape[1]
        if observe is not None:
            observe(INPUT, streams, lane_of)
        for layer, block, convention in a.blocks:
            origin = _split(lane_of, passes, layer, streams.image.shape[0])
            if len(origin) > streams.image.shape[0]:
                streams = streams.select(origin)
                lane_kw, post_kw = _index(lane_kw, origin), _index(post_kw, origin)
            groups: dict[str | None, list[int]] = defaultdict(list)
            patched: list[tuple[int, str]] = []  # (lane, source pass): computed as is, then the image tokens replaced
            for lane in range(len(origin)):
                members = [n for n in names if lane_of[n] == lane]
                kind = passes[members[0]].at(layer) if members else None
                if isinstance(kind, PatchFrom):
                    patched.append((lane, kind.source))
                    kind = None
                groups[kind].append(lane)
            for kind, lanes in groups.items():
                if kind == SKIP:
                    continue
                every = len(lanes) == len(origin)
                idx = None if every else torch.tensor(lanes, device=streams.image.device)
                part = streams if every else streams.select(idx)
                recorded = []
                if record is not None and layer in record[0]:
                    recorded = [(i, n) for i, lane in enumerate(lanes) for n in names if lane_of[n] == lane and n in record[1]]
                control = self._control.activate(layer, n_image, kind == IDENTITY_ATTENTION, recorded,
                                                 record[2] if record else None) if self._control else nullcontext()
                # a block whose attention is intercepted runs eagerly even when it is compiled (its hooks and the
                # torch-function mode stay outside any graph); every other block runs as compiled, if it is
                intercepted = kind == IDENTITY_ATTENTION or bool(recorded)
                with control:
                    out = a.call_block(block._call_impl if intercepted else block, convention, part,
                                       lane_kw if every else _index(lane_kw, idx), shared_kw)
                streams = out if every else streams.put(idx, out)
            if patched:
                device = streams.image.device
                into = torch.tensor([lane for lane, _ in patched], device=device)
                source = torch.tensor([lane_of[name] for _, name in patched], device=device)
                streams = Streams(streams.image.index_copy(0, into, streams.image[source]), streams.text)
            if observe is not None:
                observe(layer, streams, lane_of)
        final = [lane_of[n] for n in names]
        preds = a.unembed(streams.image[final], _index(post_kw, final), latents, dict(extras))
        return {n: preds[i : i + 1] for i, n in enumerate(names)}


def _split(lane_of: dict[str, int], passes: Mapping[str, Pass], layer: str, n_lanes: int) -> list[int]:
    """Split every lane whose passes disagree about ``layer``; returns the source lane of each new lane and
    updates ``lane_of`` in place."""
    origin = list(range(n_lanes))
    for lane in range(n_lanes):
        members = [n for n, l in lane_of.items() if l == lane]
        kinds = list(dict.fromkeys(passes[n].at(layer) for n in members))
        for kind in kinds[1:]:
            origin.append(lane)
            for n in members:
                if passes[n].at(layer) == kind:
                    lane_of[n] = len(origin) - 1
    return origin


def _check_patches(passes: Mapping[str, Pass]) -> None:
    """Every patch source is a pass of the call, computed as is at the patched block."""
    for name, p in passes.items():
        for layer, kind in p.perturb:
            if not isinstance(kind, PatchFrom):
                continue
            if kind.source not in passes:
                raise ValueError(f"pass {name!r} takes block {layer}'s output from {kind.source!r}, which is not a "
                                 f"pass of this forward ({', '.join(passes)})")
            if passes[kind.source].at(layer) is not None:
                raise ValueError(f"pass {name!r} takes block {layer}'s output from {kind.source!r}, which perturbs "
                                 "that block itself")


def _chunks(passes: Mapping[str, Pass], max_lanes: int | None) -> list[list[str]]:
    """The passes in groups of at most ``max_lanes`` (each with the sources it patches from), in order."""
    names = list(passes)
    if max_lanes is None or len(names) <= max_lanes:
        return [names]
    chunks: list[list[str]] = []
    current: list[str] = []
    for name in names:
        grown = list(dict.fromkeys(current + sorted(passes[name].patch_sources()) + [name]))
        if len(grown) > max_lanes and current:
            chunks.append(current)
            grown = list(dict.fromkeys(sorted(passes[name].patch_sources()) + [name]))
        if len(grown) > max_lanes:
            raise ValueError(f"max_lanes {max_lanes}: pass {name!r} needs {len(grown)} lanes with the passes it "
                             "patches from")
        current = grown
    return chunks + [current]


def _index(tensors: dict[str, Any], lanes) -> dict[str, Any]:
    return {k: v[lanes] if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}
