"""What every model family adapter provides, and the family-independent pieces they share.

An adapter owns everything that depends on the family of a diffusers pipeline: the block lists and their
names, how a block is called and in which order it returns its streams, embedding and un-embedding around
the blocks, prompt encoding, initial noise, timesteps, decoding, the latent and text-token layout, and
whether the model has a distilled guidance embedding. Nothing outside ``cslg.families`` branches on a
family or on tensor shapes.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Sequence

import torch
import torch.nn as nn
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from ..layers import canonical_layers, repeated
from .layout import AttentionLayout, Conditioning, LatentLayout, Streams, TextRoles


class LayerError(ValueError):
    """An unknown or malformed layer name; the message gives the valid range."""


# Block conventions: the order in which a block takes and returns its streams.
TEXT_IMAGE = "text_image"  # returns (encoder_hidden_states, hidden_states): FLUX, SD3, Qwen-Image
IMAGE_TEXT = "image_text"  # returns (hidden_states, encoder_hidden_states): CogView4, HunyuanVideo, Mochi
IMAGE_ONLY = "image_only"  # returns hidden_states alone: PixArt, SANA, Wan, LTX
JOINT = "joint"  # takes and returns one [text, image] sequence as hidden_states: FLUX.2 and Chroma single blocks


@dataclass(frozen=True)
class BlockList:
    """One list of blocks of a transformer: the module attribute, the name prefix of its layers, a label for
    figures and error messages, and its output convention."""

    attr: str
    prefix: str
    label: str
    output: str = TEXT_IMAGE


class Adapter:
    """Base class of the family adapters. Subclasses set the class attributes and implement the methods."""

    name: ClassVar[str]
    pipeline_classes: ClassVar[tuple[type, ...]]
    block_lists: ClassVar[tuple[BlockList, ...]]
    tiny_presets: ClassVar[tuple[str, ...]] = ()  # built by ``tiny`` (offline, random weights)
    has_distilled_guidance: ClassVar[bool] = False
    default_guidance: ClassVar[float | None] = None
    default_cfg_scale: ClassVar[float] = 1.0  # the family pipeline's default (true) CFG scale
    pag_default_layers: ClassVar[tuple[str, ...]] = ()
    default_max_sequence_length: ClassVar[int] = 256
    img2img_pipeline: ClassVar[type | None] = None  # the family's diffusers image-to-image pipeline, if any
    max_sequence_length_limit: ClassVar[int] = 512  # T5's, which diffusers' pipelines enforce
    video: ClassVar[bool] = False  # makes videos: latents with a frame axis, decoded to a list of frames each
    default_frames: ClassVar[int] = 1  # the pipeline's default num_frames (video families)
    fps: ClassVar[int] = 16  # frames per second of the videos a run folder keeps (video families)
    # the released transformer at its usual settings, for benchmarks/real_size.py (random weights, no download):
    # {"transformer": config kwargs, "height", "width", "steps", "text_tokens"(, "frames")}
    released: ClassVar[dict[str, Any] | None] = None

    def __init__(self, pipe: DiffusionPipeline, guidance: float | None = None, frames: int | None = None):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.guidance = self.default_guidance if guidance is None else guidance
        if frames is not None and not self.video:
            raise ValueError(f"num_frames: {self.name} models make images, not videos")
        self.frames = self.default_frames if frames is None else frames
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

    def resolve_layers(self, layers: str | int | Sequence[str | int]) -> list[str]:
        """Canonical names for ``layers`` (ints or strings like ``"5"``, ``"s12"``), in order, no duplicates."""
        try:
            names = canonical_layers(layers)
        except (TypeError, ValueError) as e:
            raise LayerError(str(e)) from None
        for name in names:
            if name not in self.layer_names:
                raise LayerError(f"unknown layer {name!r}: valid layers are {self.valid_range()}")
        if twice := repeated(names):
            raise LayerError(f"layer {twice!r} is given twice")
        return list(names)

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
        new streams, read in the block's own output order. ``block``: the module, or a callable standing for it
        (its uncompiled call)."""
        if convention.output == IMAGE_ONLY:
            return Streams(block(streams.image, **lane, **shared), None)
        if convention.output == JOINT:
            n_text = streams.text.shape[1]
            out = block(hidden_states=torch.cat([streams.text, streams.image], dim=1), **lane, **shared)
            return Streams(out[:, n_text:], out[:, :n_text])
        out = block(hidden_states=streams.image, encoder_hidden_states=streams.text, **lane, **shared)
        text, image = out if convention.output == TEXT_IMAGE else out[::-1]
        return Streams(image, text)

    @staticmethod
    def image_output(convention: BlockList, output: Any) -> torch.Tensor:
        """The image-token stream of a block's raw output (for forward hooks)."""
        if convention.output == IMAGE_ONLY:
            return output
        if convention.output == JOINT:
            raise ValueError(f"{convention.label} return one [text, image] sequence: its image tokens cannot be told "
                             "apart without the number of text tokens")
        return output[1] if convention.output == TEXT_IMAGE else output[0]

    def image_tokens_of_call(self, convention: BlockList, args: tuple, kwargs: dict[str, Any]) -> int:
        """The number of image tokens in a block call met without the executor (a hook on the block): those of
        its image input."""
        return self.image_output(convention, self.skip_output(convention, args, kwargs)).shape[1]

    def skip_output(self, convention: BlockList, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What a skipped block returns for the inputs it was called with: its inputs, in its output order."""
        image = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        if convention.output in (IMAGE_ONLY, JOINT):
            return image
        # CogView4's forward passes the streams positionally
        text = kwargs["encoder_hidden_states"] if "encoder_hidden_states" in kwargs else args[1] if len(args) > 1 else None
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

    def initial_noise(self, seed: int | torch.Generator, height: int, width: int) -> tuple[torch.Tensor, dict[str, Any]]:
        """The noise diffusers draws for one image for ``seed`` (or from a generator) and the per-image extras the
        transformer needs."""
        raise NotImplementedError

    def timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def image_start(self, images: torch.Tensor, seeds: Sequence[int | torch.Generator], timesteps: torch.Tensor,
                    strength: float, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Image-to-image: ``(start latents, the timesteps left)``. Image ``j`` (preprocessed pixels
        ``images[j]``) is encoded and noised to the first timestep ``strength`` keeps, with the noise of
        ``seeds[j]``, as the family's img2img pipeline does it (its own ``get_timesteps`` and ``prepare_latents``)."""
        if self.img2img_pipeline is None:
            raise ValueError(f"image: image-to-image is not supported for {self.name}")
        i2i = pipeline_view(self.img2img_pipeline, self.pipe)
        kept, _ = i2i.get_timesteps(len(timesteps), strength, self.device)
        latents = [self.encode_start(i2i, images[j:j + 1], kept[:1], seed, height, width)
                   for j, seed in enumerate(seeds)]
        return torch.cat(latents), kept

    def preprocess_image(self, image: Any, height: int, width: int) -> torch.Tensor:
        """Pixels ``[N, 3, height, width]`` in ``[-1, 1]`` as the family's img2img pipeline prepares them."""
        if self.img2img_pipeline is None:
            raise ValueError(f"image: image-to-image is not supported for {self.name}")
        return pipeline_view(self.img2img_pipeline, self.pipe).image_processor.preprocess(image, height=height,
                                                                                           width=width)

    def encode_start(self, i2i: DiffusionPipeline, pixels: torch.Tensor, t: torch.Tensor,
                     seed: int | torch.Generator, height: int, width: int) -> torch.Tensor:
        """One image's start latents: ``i2i.prepare_latents`` (the img2img pipeline's own) for a batch of one."""
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

    def postprocess_cfg(self, v: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """The family's post-processing of a prediction ``v`` that combines a negative-prompt pass with the
        conditional prediction ``c`` (identity; Qwen-Image rescales to the norm of ``c``). The methods that combine
        such passes call it through ``Step.postprocess_cfg``."""
        return v

    def cfg_postprocessor(self, timestep: float) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The post-processing of the step at ``timestep`` (``postprocess_cfg``; Z-Image's options depend on the
        timestep)."""
        return self.postprocess_cfg

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

    def default_height_width(self) -> tuple[int, int]:
        """The pipeline's default ``(height, width)`` in pixels."""
        return self.default_size(), self.default_size()

    def default_size(self) -> int:
        """The pipeline's default image side in pixels."""
        sample_size = getattr(self.pipe, "default_sample_size", None) or self.transformer.config.sample_size
        return sample_size * self.pipe.vae_scale_factor

    # Real size without text encoders (benchmarks/real_size.py) ------------------------------------------
    def random_conditioning(self, n: int, text_tokens: int, seed: int = 0) -> Conditioning:
        """``n`` rows of random prompt embeddings shaped as the family's text encoders give them for ``text_tokens``
        tokens: the released transformer runs without its text encoders."""
        raise NotImplementedError(f"{self.name}: no random_conditioning")

    def pipeline_inputs(self, cond: Conditioning, negative: Conditioning, cfg_scale: float) -> dict[str, Any]:
        """The family pipeline's ``__call__`` arguments that run its CFG at ``cfg_scale`` on these embeddings (one
        row each) instead of on prompts."""
        raise NotImplementedError(f"{self.name}: no pipeline_inputs")

    def randn(self, *shape: int, seed: int = 0) -> torch.Tensor:
        """Standard normal values of ``shape`` (drawn on the CPU from ``seed``) on the pipeline's device and dtype."""
        return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(self.device, self.dtype)

    # Tiny presets ----------------------------------------------------------------------------------------
    @classmethod
    def tiny(cls, preset: str, size: Any, seed: int) -> DiffusionPipeline:
        """The tiny preset ``preset`` (one of ``tiny_presets``) at ``size`` (a ``cslg.families.tiny.TinySize``)."""
        raise NotImplementedError


class SpatialAdapter(Adapter):
    """A family whose latents are spatial ``[B, C, H, W]`` and whose transformer cuts them into
    ``patch_size x patch_size`` tokens (SD3, PixArt): the noise, the token grid and the un-patchifying they share."""

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels, height, width, self.dtype, self.device, generator(seed)
        )
        return latents, {}

    def layout(self, latents, extras):
        p = self.transformer.config.patch_size
        return LatentLayout(latents.shape[-2] // p, latents.shape[-1] // p, patch=p)

    def unpatchify(self, hidden: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """Tokens ``[B, h*w, p*p*C]`` (the output projection's) as spatial latents ``[B, C, h*p, w*p]``."""
        p = self.transformer.config.patch_size
        h, w = latents.shape[-2] // p, latents.shape[-1] // p
        hidden = hidden.reshape(hidden.shape[0], h, w, p, p, -1).permute(0, 5, 1, 3, 2, 4)
        return hidden.reshape(hidden.shape[0], -1, h * p, w * p)


# Helpers the adapters share ---------------------------------------------------------------------------------
def pipeline_view(pipeline_class: type[DiffusionPipeline], pipe: DiffusionPipeline) -> DiffusionPipeline:
    """``pipe``'s components (the same modules: nothing is copied or moved) as a ``pipeline_class``."""
    keys = [k for k in inspect.signature(pipeline_class.__init__).parameters if k != "self"]
    return pipeline_class(**{k: pipe.components[k] for k in keys if k in pipe.components})


def generator(seed: int | torch.Generator) -> torch.Generator:
    """The generator diffusers' pipelines draw noise from for "seed S" (a generator is used as it is)."""
    return seed if isinstance(seed, torch.Generator) else torch.Generator("cpu").manual_seed(int(seed))


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
