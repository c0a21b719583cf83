"""What every model family adapter provides, and the family-independent pieces they share.

An adapter owns everything that depends on the family of a diffusers pipeline: the block lists and their
names, how a block is called and in which order it returns its streams, embedding and un-embedding around
the blocks, prompt encoding, initial noise, timesteps, decoding, the latent and text-token layout, and
whether the model has a distilled guidance embedding. Nothing outside ``cslg.families`` branches on a
family or on tensor shapes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps


class LayerError(ValueError):
    """An unknown or malformed layer name; the message gives the valid range."""


# Block conventions: the order in which a block takes and returns its streams.
TEXT_IMAGE = "text_image"  # returns (encoder_hidden_states, hidden_states): FLUX, SD3, Qwen-Image
IMAGE_TEXT = "image_text"  # returns (hidden_states, encoder_hidden_states): CogView4, HunyuanVideo, Mochi
IMAGE = "image"  # returns hidden_states alone: PixArt, SANA, Wan, LTX


@dataclass(frozen=True)
class BlockList:
    """One list of blocks of a transformer: the module attribute, the name prefix of its layers, a label for
    figures and error messages, and its output convention."""

    attr: str
    prefix: str
    label: str
    output: str = TEXT_IMAGE


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
    """

    h: int
    w: int
    patch: int | None = None
    packed: int | None = None

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
        return token_map.repeat_interleave(p, dim=-2).repeat_interleave(p, dim=-1)[:, None]

    @property
    def pixels_per_token(self) -> int:
        """Latent pixels along each side of a token: ``patch``, or 2 for packed 2x2 patches."""
        return self.patch if self.packed is None else math.isqrt(self.packed)

    def to_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """A prediction ``[B, ...]`` as latent pixels ``[B, C, h*f, w*f]`` (``f = pixels_per_token``; packed
        latents are unpacked as diffusers' ``_unpack_latents`` does)."""
        if self.packed is None:
            return x
        f = self.pixels_per_token
        return x.reshape(x.shape[0], self.h, self.w, -1, f, f).permute(0, 3, 1, 4, 2, 5).reshape(
            x.shape[0], -1, self.h * f, self.w * f)

    def from_pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Latent pixels ``[B, C, h*f, w*f]`` in the prediction's layout (the inverse of ``to_pixels``)."""
        if self.packed is None:
            return x
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
            return values.view(1, -1, 1, 1)
        return values.repeat_interleave(self.packed).view(1, 1, -1)


@dataclass(frozen=True)
class AttentionLayout:
    """Where text and image tokens sit in the keys of one attention call of a block.

    ``role``: ``"joint"`` (image queries attend ``[text, image]`` or ``[image, text]`` keys, one call),
    ``"self"`` (image->image only) or ``"cross"`` (image->text only). For ``joint`` calls the queries are the
    same sequence as the keys.
    """

    role: str
    text_first: bool = True


class Adapter:
    """Base class of the family adapters. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[type, ...]]
    block_lists: ClassVar[tuple[BlockList, ...]]
    has_distilled_guidance: ClassVar[bool] = False
    default_guidance: ClassVar[float | None] = None
    pag_default_layers: ClassVar[tuple[str, ...]] = ()
    default_max_sequence_length: ClassVar[int] = 256
    max_sequence_length_limit: ClassVar[int] = 512  # T5's, which diffusers' pipelines enforce

    def __init__(self, pipe: DiffusionPipeline, guidance: float | None = None):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.guidance = self.default_guidance if guidance is None else guidance
        self.blocks: list[tuple[str, nn.Module, BlockList]] = [
            (f"{bl.prefix}{i}", block, bl)
            for bl in self.block_lists
            for i, block in enumerate(getattr(self.transformer, bl.attr, ()))
        ]
        self.layer_names = [name for name, _, _ in self.blocks]

    # Devices ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The device the pipeline computes on (respects CPU offload)."""
        return self.pipe._execution_device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    # Layers ----------------------------------------------------------------------------------------------
    def valid_range(self) -> str:
        """Human-readable valid layer range, e.g. ``0-18 (double-stream blocks) and s0-s37 (single-stream blocks)``."""
        parts = []
        for bl in self.block_lists:
            n = len(getattr(self.transformer, bl.attr, ()))
            if n:
                parts.append(f"{bl.prefix}0-{bl.prefix}{n - 1}" + (f" ({bl.label})" if len(self.block_lists) > 1 else ""))
        return " and ".join(parts)

    def resolve_layers(self, layers: Sequence[str | int]) -> list[str]:
        """Canonical names for ``layers`` (ints or strings like ``"5"``, ``"s12"``), in order, no duplicates."""
        out: list[str] = []
        for layer in layers:
            name = str(layer).strip().lower()
            if name not in self.layer_names:
                raise LayerError(f"unknown layer {layer!r}: valid layers are {self.valid_range()}")
            if name in out:
                raise LayerError(f"layer {layer!r} is given twice")
            out.append(name)
        return out

    def block(self, name: str) -> nn.Module:
        (name,) = self.resolve_layers([name])
        return self.blocks[self.layer_names.index(name)][1]

    def default_attention_layers(self) -> list[str]:
        """The middle third of the first block list (S-CFG's UNet recipe used the middle resolutions)."""
        first = self.block_lists[0]
        n = len(getattr(self.transformer, first.attr))
        return [f"{first.prefix}{i}" for i in range(n // 3, max(n // 3 + 1, 2 * n // 3))]

    def block_groups(self) -> list[tuple[str, int]]:
        """``(label, index of the first block)`` of every non-empty block list, in execution order."""
        out, start = [], 0
        for bl in self.block_lists:
            n = len(getattr(self.transformer, bl.attr, ()))
            if n:
                out.append((bl.label, start))
            start += n
        return out

    # Block calls -----------------------------------------------------------------------------------------
    def call_block(self, block: nn.Module, convention: BlockList, streams: Streams, lane: dict[str, Any],
                   shared: dict[str, Any]) -> Streams:
        """Run one block on ``streams`` (``lane``: per-lane keyword tensors, ``shared``: the rest) and return its
        new streams, read in the block's own output order."""
        if convention.output == IMAGE:
            return Streams(block(streams.image, **lane, **shared), None)
        out = block(hidden_states=streams.image, encoder_hidden_states=streams.text, **lane, **shared)
        text, image = out if convention.output == TEXT_IMAGE else out[::-1]
        return Streams(image, text)

    @staticmethod
    def image_output(convention: BlockList, output: Any) -> torch.Tensor:
        """The image-token stream of a block's raw output (for forward hooks)."""
        if convention.output == IMAGE:
            return output
        return output[1] if convention.output == TEXT_IMAGE else output[0]

    def skip_output(self, convention: BlockList, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped block returns for the inputs it was called with: its inputs, in its output order."""
        image = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if convention.output == IMAGE:
            return image
        text = kwargs.get("encoder_hidden_states")
        return (text, image) if convention.output == TEXT_IMAGE else (image, text)

    def attention_output(self, block: nn.Module, convention: BlockList) -> tuple[nn.Module, Callable[[Any, int], torch.Tensor]]:
        """The paper's capture site: the module whose output is the block's image-token attention output before
        gating and residual, and how to read the image tokens from that output (given their number)."""
        return block.attn.to_out[0], lambda output, n_image: output

    def attention_calls(self, block: nn.Module, convention: BlockList) -> list[tuple[nn.Module, AttentionLayout]]:
        """The attention modules of ``block`` where image queries attend image or text keys, with their layout."""
        raise NotImplementedError

    # Sampling --------------------------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        raise NotImplementedError

    def initial_noise(self, seed: int, height: int, width: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The noise diffusers draws for ``seed`` and the per-image extras the transformer needs."""
        raise NotImplementedError

    def timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, latents: torch.Tensor, t: torch.Tensor, cond: Conditioning, extras: dict[str, Any],
              attention_kwargs: dict[str, Any] | None) -> tuple[Streams, dict, dict, dict]:
        """``(streams, lane, shared, post)`` entering the first block: the streams, the per-lane and the shared
        keyword arguments of the block calls, and the per-lane tensors ``unembed`` needs."""
        raise NotImplementedError

    def unembed(self, image: torch.Tensor, post: dict[str, Any], latents: torch.Tensor, extras: dict[str, Any]
                ) -> torch.Tensor:
        """The model's prediction from the image stream leaving the last block."""
        raise NotImplementedError

    def guided(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The family's post-processing of a guided prediction ``v`` with conditional prediction ``c``
        (identity; Qwen-Image rescales to the norm of ``c``)."""
        return v

    def layout(self, latents: torch.Tensor, extras: dict[str, Any]) -> LatentLayout:
        raise NotImplementedError

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """Token roles of ``prompt`` in the text sequence (length ``text_len``) the transformer sees."""
        raise NotImplementedError

    def unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Latents in the VAE's layout."""
        return latents

    def decode(self, latents: torch.Tensor, height: int, width: int, output_type: str = "pil"):
        """Images from final latents, as the pipelines decode them."""
        vae = self.pipe.vae
        shift = vae.config.get("shift_factor") or 0.0
        latents = self.unpack(latents, height, width) / vae.config.scaling_factor + shift
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    def check_settings(self, height: int, width: int, max_sequence_length: int) -> None:
        """Fail unless the model can produce a ``height`` x ``width`` image from text of that length."""
        multiple = self.size_multiple()
        for flag, value in (("--height", height), ("--width", width)):
            if value % multiple:
                raise ValueError(f"{flag} {value}: {self.name} needs a multiple of {multiple}")
        if not 1 <= max_sequence_length <= self.max_sequence_length_limit:
            raise ValueError(f"--max-sequence-length {max_sequence_length}: {self.name} takes 1 to "
                             f"{self.max_sequence_length_limit} text tokens")

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor * 2

    def default_size(self) -> int:
        """The pipeline's default image side in pixels."""
        sample_size = getattr(self.pipe, "default_sample_size", None) or self.transformer.config.sample_size
        return sample_size * self.pipe.vae_scale_factor


# Helpers the adapters share ---------------------------------------------------------------------------------
def generator(seed: int) -> torch.Generator:
    """The generator diffusers' pipelines draw noise from for "seed S"."""
    return torch.Generator("cpu").manual_seed(int(seed))


def resolution_shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """The pipelines' resolution-dependent timestep shift ``mu`` (``max_shift``: the pipeline's default)."""
    return calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", max_shift),
    )


def flow_timesteps(scheduler, steps: int, device, image_seq_len: int, max_shift: float) -> torch.Tensor:
    """FLUX / Qwen-Image timesteps: sigmas ``linspace(1, 1/steps)`` with the resolution shift ``mu``."""
    import numpy as np

    sigmas = None if scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
    mu = resolution_shift(scheduler, image_seq_len, max_shift)
    timesteps = retrieve_timesteps(scheduler, steps, device, sigmas=sigmas, mu=mu)[0]
    scheduler.set_begin_index(0)
    return timesteps
