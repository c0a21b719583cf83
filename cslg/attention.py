"""Recording the attention probabilities of image queries in MMDiT blocks (used by S-CFG).

In a joint-attention block every image token attends to all keys: ``[image, text]`` in SD3/SD3.5,
``[text, image]`` in FLUX (double-stream blocks see two streams, single-stream blocks one concatenated
sequence). For a UNet-style reading of these probabilities the image->text block plays the
cross-attention and the image->image block the self-attention.

A ``RecordingProcessor`` wraps a block's own attention processor: the block output is exactly what that
processor returns. Alongside, it takes the q/k projections that processor computed, rebuilds the image
queries and all keys the way diffusers does (q/k norms, FLUX's RoPE) and takes the head-averaged softmax
in chunks of queries, so the full ``[heads, N, N + T]`` matrix never exists at once. Only ``block.attn``
is recorded; SD3.5's ``attn2`` (a second self-attention on image tokens) keeps its own processor.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Iterator, Sequence

import torch
from diffusers import DiffusionPipeline
from diffusers.models.embeddings import apply_rotary_emb

from .denoiser import Denoiser
from .layers import get_block, resolve_layers
from .models import family_of

# float32 logits per chunk of queries: small on CPU (cache-sized chunks run ~3x faster), large on GPU
CHUNK_ELEMENTS = 2**20
CHUNK_ELEMENTS_GPU = 2**26


@dataclass
class AttentionMaps:
    """Head-averaged probabilities of the image queries, one entry per recorded lane.

    ``cross``: ``[b, N, T]`` image->text, each row renormalised over the text keys.
    ``self_attn``: ``[b, N, N]`` image->image, each row renormalised over the image keys.
    """

    cross: torch.Tensor
    self_attn: torch.Tensor


def attention_probs(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Head-averaged ``softmax(q kᵀ / √d)`` in float32: ``q [b, H, n, d]``, ``k [b, H, L, d]`` -> ``[b, n, L]``.

    The scale is the default of ``scaled_dot_product_attention`` that both families use.
    """
    logits = torch.matmul(q.float() * q.shape[-1] ** -0.5, k.float().transpose(-1, -2))
    return logits.softmax(dim=-1).mean(dim=1)


def split_roles(probs: torch.Tensor, text: slice, image: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """The image->text and image->image blocks of ``probs`` ``[..., L]``, each row renormalised to sum 1."""
    cross, self_attn = probs[..., text], probs[..., image]
    tiny = torch.finfo(probs.dtype).tiny
    return (
        cross / cross.sum(-1, keepdim=True).clamp_min(tiny),
        self_attn / self_attn.sum(-1, keepdim=True).clamp_min(tiny),
    )


class AttentionRecorder:
    """Sums the maps of the recorded blocks during one step; ``take`` returns their mean and clears.

    ``lanes``: which batch entries (lanes, as the blocks see the batch) to record; ``None`` = all.
    """

    def __init__(self, lanes: Sequence[int] | None = None):
        self.lanes = list(lanes) if lanes is not None else None
        self._cross: torch.Tensor | None = None
        self._self: torch.Tensor | None = None
        self._blocks = 0

    def add(self, cross: torch.Tensor, self_attn: torch.Tensor) -> None:
        if self._blocks == 0:
            self._cross, self._self = cross, self_attn
        else:
            self._cross, self._self = self._cross + cross, self._self + self_attn
        self._blocks += 1

    def take(self) -> AttentionMaps:
        """The block-averaged maps recorded since the last ``take``."""
        if self._blocks == 0:
            raise RuntimeError("no attention was recorded since the last take(): did a recorded block run?")
        maps = AttentionMaps(self._cross / self._blocks, self._self / self._blocks)
        self._cross = self._self = None
        self._blocks = 0
        return maps


def _heads(attn, x: torch.Tensor, norm) -> torch.Tensor:
    """``[B, L, H*d]`` -> ``[B, L, H, d]``, then the block's q/k norm (over ``d``) as the default processors do."""
    x = x.unflatten(-1, (attn.heads, -1))
    return norm(x) if norm is not None else x


class RecordingProcessor:
    """Wraps a block's attention processor: returns what it returns and adds this call's maps to ``recorder``.

    The q/k projections are not computed twice: forward hooks on ``to_q``, ``to_k`` and ``add_k_proj`` keep
    the outputs the wrapped processor computes (``keep_projection``), and the maps are built from them with
    the block's q/k norms and RoPE, as the default processors do. ``text_first``: key order
    ``[text, image]`` (FLUX) instead of ``[image, text]`` (SD3). The text length comes from the block's inputs
    (``see_block_inputs``, a forward pre-hook), since a single-stream block hands its attention one sequence.
    """

    PROJECTIONS = ("to_q", "to_k", "add_k_proj")

    def __init__(self, inner, recorder: AttentionRecorder, text_first: bool):
        self.inner = inner
        self.recorder = recorder
        self.text_first = text_first
        self.text_len = 0
        self.projections: dict[str, torch.Tensor] = {}

    def see_block_inputs(self, block, args, kwargs) -> None:
        self.text_len = kwargs["encoder_hidden_states"].shape[1]

    def keep_projection(self, name: str, module, args, output) -> None:
        self.projections[name] = output

    def __call__(
        self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, image_rotary_emb=None, **kwargs
    ):
        if attention_mask is not None:
            raise ValueError("attention recording does not support attention masks")
        if image_rotary_emb is not None:
            kwargs["image_rotary_emb"] = image_rotary_emb
        out = self.inner(attn, hidden_states, encoder_hidden_states=encoder_hidden_states, **kwargs)
        projections, self.projections = self.projections, {}
        self.recorder.add(*self.maps(attn, projections, image_rotary_emb))
        return out

    @torch.no_grad()
    def maps(self, attn, projections: dict[str, torch.Tensor], rope) -> tuple[torch.Tensor, torch.Tensor]:
        """``(cross [b, N, T], self [b, N, N])`` for the recorded lanes of this call."""
        if "to_q" not in projections:
            raise RuntimeError("the attention processor did not call to_q/to_k (fused projections are not supported)")
        lanes = self.recorder.lanes if self.recorder.lanes is not None else slice(None)
        t = self.text_len
        queries = _heads(attn, projections["to_q"][lanes], attn.norm_q)
        keys = _heads(attn, projections["to_k"][lanes], attn.norm_k)
        if "add_k_proj" in projections:  # a second (text) stream: SD3 joint / FLUX double-stream
            k_text = _heads(attn, projections["add_k_proj"][lanes], attn.norm_added_k)
            keys = torch.cat([k_text, keys] if self.text_first else [keys, k_text], dim=1)
        else:  # FLUX single-stream: one [text, image] sequence
            queries = queries[:, t:]
        n = queries.shape[1]
        if rope is not None:  # FLUX: positions are [text, image], so the image queries take the last n
            keys = apply_rotary_emb(keys, rope, sequence_dim=1)
            queries = apply_rotary_emb(queries, tuple(f[-n:] for f in rope), sequence_dim=1)
        text, image = (slice(0, t), slice(t, t + n)) if self.text_first else (slice(n, n + t), slice(0, n))
        q, k = queries.transpose(1, 2), keys.transpose(1, 2)  # [b, H, n, d], [b, H, L, d]
        budget = CHUNK_ELEMENTS if k.device.type == "cpu" else CHUNK_ELEMENTS_GPU
        rows = max(1, budget // (k.shape[0] * k.shape[1] * k.shape[2]))
        chunks = [split_roles(attention_probs(q[:, :, i : i + rows], k), text, image) for i in range(0, n, rows)]
        return torch.cat([c for c, _ in chunks], dim=1), torch.cat([s for _, s in chunks], dim=1)


@contextmanager
def record_attention(
    denoiser: Denoiser, layers: Sequence[str | int], lanes: Sequence[int] | None = None
) -> Iterator[AttentionRecorder]:
    """Record the image-query attention of ``layers`` (layer names) while the context is held.

    Installs a ``RecordingProcessor`` (and its hooks) on each block's ``attn`` and restores the original
    processors and removes the hooks on exit. Yields the recorder; read a step's maps with ``recorder.take()``.
    """
    transformer = denoiser.transformer
    recorder = AttentionRecorder(lanes)
    text_first = family_of(denoiser.pipe) == "flux"
    installed, hooks = [], []
    try:
        for name in resolve_layers(transformer, layers):
            block = get_block(transformer, name)
            processor = RecordingProcessor(block.attn.processor, recorder, text_first)
            hooks.append(block.register_forward_pre_hook(processor.see_block_inputs, with_kwargs=True))
            for projection in RecordingProcessor.PROJECTIONS:
                if (module := getattr(block.attn, projection, None)) is not None:
                    hooks.append(module.register_forward_hook(partial(processor.keep_projection, projection)))
            installed.append((block.attn, processor.inner))
            block.attn.set_processor(processor)
        yield recorder
    finally:
        for attn, original in installed:
            attn.set_processor(original)
        for hook in hooks:
            hook.remove()


# Which text tokens are which -------------------------------------------------------------------------
@dataclass(frozen=True)
class TextRoles:
    """Positions in a prompt's text sequence of length ``text_len``: the prompt's ``content`` tokens (one per
    word piece) and the ``background`` tokens that stand in for the paper's start token."""

    content: tuple[int, ...]
    background: tuple[int, ...]
    text_len: int

    @property
    def others(self) -> tuple[int, ...]:
        """Every text position that is not a background token."""
        background = set(self.background)
        return tuple(i for i in range(self.text_len) if i not in background)


def text_roles(pipe: DiffusionPipeline, prompt: str, text_len: int) -> TextRoles:
    """Token roles of ``prompt`` in the text sequence (length ``text_len``) the transformer sees.

    SD3/SD3.5: the sequence is ``[77 CLIP tokens, T5 tokens]`` and CLIP reads
    ``<sot> content <eot> <pad>...``: background = ``<sot>`` (the paper's choice), content = the CLIP
    content tokens (the T5 tokens repeat the same words and take no region of their own).
    FLUX: T5 only, ``content </s> <pad>...``: background = the padding tokens, or ``</s>`` when the prompt
    fills the whole sequence; content = the tokens before ``</s>``.
    """
    if family_of(pipe) == "flux":
        n = len(pipe.tokenizer_2(prompt, max_length=text_len, truncation=True).input_ids)  # content + </s>
        background = tuple(range(n, text_len)) or (n - 1,)
        return TextRoles(tuple(range(n - 1)), background, text_len)
    n = len(pipe.tokenizer(prompt, max_length=pipe.tokenizer_max_length, truncation=True).input_ids)  # <sot> .. <eot>
    return TextRoles(tuple(range(1, n - 1)), (0,), text_len)
