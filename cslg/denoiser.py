"""The transformer of a FLUX or SD3 pipeline as a velocity predictor that evaluates several *passes*
(conditioning row x latent x set of skipped blocks) in one batched forward.

Passes that differ only in their skipped blocks share the computation up to the first block where
they differ: their batch row ("lane") is split there, and a lane that skips a block does not compute it.
So an SLG/CSLG step costs ``2 + (fraction of blocks after the first skipped one)`` block-passes instead
of diffusers' 3. Prompt encoding, noise, timesteps and decoding are the pipeline's own methods, so the
results match diffusers' pipelines for the same seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch
from diffusers import DiffusionPipeline
from diffusers.pipelines.flux.pipeline_flux import calculate_shift, retrieve_timesteps

from .layers import get_blocks
from .models import execution_device, family_of


@dataclass(frozen=True)
class Pass:
    """One prediction of a step: conditioning ``row``, batch entry ``latent``, blocks to ``skip``."""

    row: int
    skip: frozenset[str] = field(default_factory=frozenset)
    latent: int = 0


@dataclass
class Conditioning:
    """Encoded prompts, one row per prompt (``text_ids`` is FLUX's, shared by all rows)."""

    prompt_embeds: torch.Tensor
    pooled: torch.Tensor
    text_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.prompt_embeds.shape[0]


class Denoiser:
    """Family-independent part: the branched block loop. Subclasses say how to embed and un-embed."""

    family: str

    def __init__(self, pipe: DiffusionPipeline):
        self.pipe = pipe
        self.transformer = pipe.transformer
        self.blocks = get_blocks(pipe.transformer)
        self.layer_names = [name for name, _ in self.blocks]

    @property
    def device(self) -> torch.device:
        return execution_device(self.pipe)

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @torch.no_grad()
    def predict(
        self,
        latents: torch.Tensor,
        t: torch.Tensor,
        cond: Conditioning,
        passes: Sequence[Pass],
        joint_attention_kwargs: dict[str, Any] | None = None,
    ) -> torch.Tensor:
        """Velocity predictions ``[len(passes), ...]`` for ``latents`` ``[B, ...]`` at timestep ``t``.

        Before any split, lane ``i`` is the ``i``-th distinct ``(latent, row)`` among ``passes`` in order
        (block hooks and attention processors see this batch).
        """
        if hook := getattr(self.transformer, "_hf_hook", None):  # model CPU offload: bring weights over
            hook.pre_forward(self.transformer)
        sources = list(dict.fromkeys((p.latent, p.row) for p in passes))
        lane_of = [sources.index((p.latent, p.row)) for p in passes]
        hidden, enc, temb, kwargs = self.embed(
            latents[[s[0] for s in sources]], t, _select(cond, [s[1] for s in sources])
        )
        kwargs["joint_attention_kwargs"] = joint_attention_kwargs
        for name, block in self.blocks:
            # Split every lane whose passes disagree about skipping this block.
            src = list(range(hidden.shape[0]))
            for lane in range(len(src)):
                members = [k for k, l in enumerate(lane_of) if l == lane]
                skipping = [k for k in members if name in passes[k].skip]
                if skipping and len(skipping) < len(members):
                    src.append(lane)
                    for k in skipping:
                        lane_of[k] = len(src) - 1
            if len(src) > hidden.shape[0]:
                hidden, temb = hidden[src], temb[src]
                enc = enc[src] if enc is not None else None
            skipped = {lane_of[k] for k, p in enumerate(passes) if name in p.skip}
            run = [lane for lane in range(len(src)) if lane not in skipped]
            if len(run) == len(src):
                enc, hidden = block(hidden_states=hidden, encoder_hidden_states=enc, temb=temb, **kwargs)
            elif run:
                idx = torch.tensor(run, device=hidden.device)
                enc_run, hid_run = block(
                    hidden_states=hidden[idx], encoder_hidden_states=enc[idx], temb=temb[idx], **kwargs
                )
                hidden = hidden.index_copy(0, idx, hid_run)
                enc = enc.index_copy(0, idx, enc_run) if enc_run is not None else None
        return self.unembed(hidden[lane_of], temb[lane_of], latents)

    # Family-specific parts -------------------------------------------------------------------------
    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        raise NotImplementedError

    def initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        raise NotImplementedError

    def timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def embed(self, latents, t, cond) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, dict]:
        raise NotImplementedError

    def unembed(self, hidden, temb, latents) -> torch.Tensor:
        raise NotImplementedError

    def unpack(self, latents: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Latents in the VAE's ``[B, C, H, W]`` layout (FLUX packs them into tokens)."""
        return latents

    def decode(self, latents: torch.Tensor, height: int, width: int, output_type: str = "pil"):
        """Images from final latents, as the pipelines decode them."""
        vae = self.pipe.vae
        latents = self.unpack(latents, height, width) / vae.config.scaling_factor + vae.config.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)


def _select(cond: Conditioning, rows: list[int]) -> Conditioning:
    return Conditioning(cond.prompt_embeds[rows], cond.pooled[rows], cond.text_ids)


def _shift(scheduler, image_seq_len: int, max_shift: float) -> float:
    """The pipelines' resolution-dependent timestep shift ``mu`` (``max_shift``: the pipeline's default)."""
    return calculate_shift(
        image_seq_len,
        scheduler.config.get("base_image_seq_len", 256),
        scheduler.config.get("max_image_seq_len", 4096),
        scheduler.config.get("base_shift", 0.5),
        scheduler.config.get("max_shift", max_shift),
    )


def _generator(seed: int) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(seed))


class SD3Denoiser(Denoiser):
    """StableDiffusion3Pipeline (SD3 / SD3.5): sequence order [image, text]."""

    family = "sd3"

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
        )
        return Conditioning(embeds, pooled)

    def initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        return self.pipe.prepare_latents(
            1, self.transformer.config.in_channels, height, width, self.dtype, self.device, _generator(seed)
        )

    def timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        scheduler, kwargs = self.pipe.scheduler, {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            kwargs["mu"] = _shift(scheduler, (latents.shape[-2] // patch) * (latents.shape[-1] // patch), 1.16)
        return retrieve_timesteps(scheduler, steps, self.device, **kwargs)[0]

    def embed(self, latents, t, cond):
        tr = self.transformer
        hidden = tr.pos_embed(latents).contiguous()
        temb = tr.time_text_embed(t.expand(latents.shape[0]), cond.pooled)
        enc = tr.context_embedder(cond.prompt_embeds)
        return hidden, enc, temb, {}

    def unembed(self, hidden, temb, latents):
        tr = self.transformer
        hidden = tr.proj_out(tr.norm_out(hidden, temb))
        p, c = tr.config.patch_size, tr.out_channels
        h, w = latents.shape[-2] // p, latents.shape[-1] // p
        hidden = hidden.reshape(hidden.shape[0], h, w, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", hidden).reshape(hidden.shape[0], c, h * p, w * p)


class FluxDenoiser(Denoiser):
    """FluxPipeline (FLUX.1-dev / -schnell): sequence order [text, image]; ``guidance`` is the distilled
    guidance embedding (ignored by models without one, such as schnell)."""

    family = "flux"

    def __init__(self, pipe: DiffusionPipeline, guidance: float = 3.5):
        super().__init__(pipe)
        self.guidance = guidance
        self.img_ids: torch.Tensor | None = None

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=max_sequence_length
        )
        return Conditioning(embeds, pooled, text_ids)

    def initial_noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        latents, self.img_ids = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels // 4, height, width, self.dtype, self.device, _generator(seed)
        )
        return latents

    def timesteps(self, steps: int, latents: torch.Tensor) -> torch.Tensor:
        scheduler = self.pipe.scheduler
        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = _shift(scheduler, latents.shape[1], 1.15)
        timesteps = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)[0]
        scheduler.set_begin_index(0)
        return timesteps

    def embed(self, latents, t, cond):
        tr = self.transformer
        if self.img_ids is None:
            raise RuntimeError("FluxDenoiser.initial_noise must be called before predict")
        hidden = tr.x_embedder(latents)
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000  # as FluxPipeline passes it
        timestep = timestep.to(hidden.dtype) * 1000
        if tr.config.guidance_embeds:
            guidance = torch.full([latents.shape[0]], self.guidance, device=latents.device, dtype=torch.float32)
            temb = tr.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, cond.pooled)
        else:
            temb = tr.time_text_embed(timestep, cond.pooled)
        enc = tr.context_embedder(cond.prompt_embeds)
        rope = tr.pos_embed(torch.cat((cond.text_ids, self.img_ids), dim=0))
        return hidden, enc, temb, {"image_rotary_emb": rope}

    def unembed(self, hidden, temb, latents):
        tr = self.transformer
        return tr.proj_out(tr.norm_out(hidden, temb))

    def unpack(self, latents, height, width):
        return self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)


def make_denoiser(pipe: DiffusionPipeline, guidance: float = 3.5) -> Denoiser:
    """The denoiser for ``pipe``'s family (``guidance``: FLUX's distilled guidance embedding)."""
    return FluxDenoiser(pipe, guidance) if family_of(pipe) == "flux" else SD3Denoiser(pipe)
