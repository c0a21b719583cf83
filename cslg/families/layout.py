"""The tensors and token layouts that pass between an adapter, the executor and the methods: the streams between
blocks, encoded prompts, the image-token grid behind a prediction, text-token roles and where text and image tokens
sit in an attention call. Needs torch only (the methods import it without diffusers)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Sequence

import torch


@dataclass
class Streams:
    """The hidden states between blocks: image tokens and (for MMDiT blocks) text tokens."""

    image: torch.Tensor
    text: torch.Tensor | None = None

    def select(self, lanes: torch.Tensor | list[int]) -> Streams:
        return Streams(self.image[lanes], None if self.text is None else self.text[lanes])

    def put(self, lanes: torch.Tensor, part: Streams) -> Streams:
        """These streams with the rows ``lanes`` replaced by ``part``."""
        text = self.text
        if text is not None and part.text is not None:
            text = text.index_copy(0, lanes, part.text)
        return Streams(self.image.index_copy(0, lanes, part.image), text)


@dataclass
class Conditioning:
    """Encoded prompts, one row per prompt. ``shared`` holds per-request tensors common to every row
    (FLUX's ``text_ids``); ``mask`` is the text attention mask where the family uses one."""

    embeds: torch.Tensor
    pooled: torch.Tensor | None = None
    mask: torch.Tensor | None = None
    shared: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return self.embeds.shape[0]

    def select(self, rows: Sequence[int]) -> Conditioning:
        rows = list(rows)
        return replace(
            self,
            embeds=self.embeds[rows],
            pooled=None if self.pooled is None else self.pooled[rows],
            mask=None if self.mask is None else self.mask[rows],
        )


@dataclass(frozen=True)
class TextRoles:
    """Positions in a prompt's text sequence of length ``text_len``: the prompt's ``content`` tokens (one per
    word piece) and the ``background`` tokens that stand in for a UNet's start token (S-CFG)."""

    content: tuple[int, ...]
    background: tuple[int, ...]
    text_len: int

    @property
    def others(self) -> tuple[int, ...]:
        """Every text position that is not a background token."""
        background = set(self.background)
        return tuple(i for i in range(self.text_len) if i not in background)


@dataclass(frozen=True)
class LatentLayout:
    """The ``(h, w)`` grid of image tokens behind a prediction (tokens in row-major order, as the attention
    sees them) and how a prediction tensor holds them.

    ``patch`` set: spatial ``[B, C, H, W]`` latents, each token a ``patch x patch`` patch (SD3, PixArt).
    ``packed`` set: packed ``[B, h*w, C*packed]`` latents, each row a token holding a ``packed``-pixel patch of
    every channel, channel-major (FLUX, Qwen-Image: 2x2 patches, ``packed = 4``).
    ``frames`` set (with ``patch``): video latents ``[B, C, F, H, W]`` whose tokens run frame by frame (Wan); the
    grid stacks the ``F`` frames vertically (``h = F * H / patch``) and the latent pixels are ``[B, C, F*H, W]``.
    """

    h: int
    w: int
    patch: int | None = None
    packed: int | None = None
    frames: int | None = None

    def token_norms(self, x: torch.Tensor) -> torch.Tensor:
        """``‖x‖₂`` over each token's values: ``[B, h, w]``."""
        if self.packed is not None:
            return x.float().norm(dim=-1).reshape(-1, self.h, self.w)
        p = self.patch
        patches = x.float().reshape(x.shape[0], x.shape[1], self.h, p, self.w, p)
        return patches.square().sum(dim=(1, 3, 5)).sqrt()

    def to_prediction(self, token_map: torch.Tensor) -> torch.Tensor:
        """A token map ``[B, h, w]`` in a shape that broadcasts against a prediction."""
        if self.packed is not None:
            return token_map.reshape(token_map.shape[0], -1, 1)
        p = self.patch
        out = token_map.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)[:, None]
        return out if self.frames is None else out.unflatten(-2, (self.frames, -1))

    @property
    def pixels_per_token(self) -> int:
        """Latent pixels along each side of a token: ``patch``, or 2 for packed 2x2 patches."""
        return self.patch if self.packed is None else math.isqrt(self.packed)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """A prediction ``[B, ...]`` as latent pixels ``[B, C, h*f, w*f]`` (``f = pixels_per_token``; packed
        latents are unpacked as diffusers' ``_unpack_latents`` does)."""
        if self.packed is None:
            return x if self.frames is None else x.flatten(2, 3)
        f = self.pixels_per_token
        return x.reshape(x.shape[0], self.h, self.w, -1, f, f).permute(0, 3, 1, 4, 2, 5).reshape(
            x.shape[0], -1, self.h * f, self.w * f)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Latent pixels ``[B, C, h*f, w*f]`` in the prediction's layout (the inverse of ``to_pixels``)."""
        if self.packed is None:
            return x if self.frames is None else x.unflatten(2, (self.frames, -1))
        f = self.pixels_per_token
        return x.reshape(x.shape[0], -1, self.h, f, self.w, f).permute(0, 2, 4, 1, 3, 5).reshape(
            x.shape[0], self.h * self.w, -1)

    def upsample(self, token_map: torch.Tensor) -> torch.Tensor:
        """A token map ``[..., h, w]`` on the latent pixels ``[..., h*f, w*f]`` (nearest: each token's value on
        each of its pixels)."""
        f = self.pixels_per_token
        return token_map.repeat_interleave(f, dim=-2).repeat_interleave(f, dim=-1)

    def channel_view(self, x: torch.Tensor) -> torch.Tensor:
        """``[C, M]``: the values of each latent channel of one prediction ``[1, ...]``."""
        if self.packed is None:
            return x[0].flatten(1)
        return x[0].unflatten(-1, (-1, self.packed)).permute(1, 0, 2).flatten(1)

    def per_channel(self, values: torch.Tensor) -> torch.Tensor:
        """Per-channel values ``[C]`` in a shape that broadcasts against a prediction ``[1, ...]``."""
        if self.packed is None:
            return values.view(1, -1, 1, 1) if self.frames is None else values.view(1, -1, 1, 1, 1)
        return values.repeat_interleave(self.packed).view(1, 1, -1)


@dataclass(frozen=True)
class AttentionLayout:
    """Where text and image tokens sit in the keys of one attention call of a block.

    ``role``: ``"joint"`` (image queries attend ``[text, image]`` or ``[image, text]`` keys, one call),
    ``"self"`` (image->image only) or ``"cross"`` (image->text only). For ``joint`` calls the queries are the
    same sequence as the keys. ``kernel``: for a module that does not compute its attention with torch's
    ``scaled_dot_product_attention`` (SANA's linear attention), how its identity attention and its probabilities
    are computed from its call (``cslg.guidance.attention.AttentionKernel``); ``None``: it calls SDPA.
    """

    role: str
    text_first: bool = True
    kernel: Any = None
