"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): joint blocks returning ``(text, image)`` (the last
one ``(None, image)``); image tokens first in the joint sequence; spatial latents, 2x2 patches; CFG."""

from __future__ import annotations

from typing import Sequence

from diffusers import StableDiffusion3Pipeline
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

from .base import Adapter, AttentionLayout, BlockList, Conditioning, LatentLayout, Streams, TextRoles, generator, resolution_shift


class SD3Adapter(Adapter):
    name = "sd3"
    pipeline_classes = (StableDiffusion3Pipeline,)
    block_lists = (BlockList("transformer_blocks", "", "joint blocks"),)
    pag_default_layers = ("1",)  # StableDiffusion3PAGPipeline's default "blocks.1"

    def attention_calls(self, block, convention):
        # SD3.5's attn2 (a second self-attention of the image tokens) is not a joint call: not perturbed
        return [(block.attn, AttentionLayout("joint", text_first=False))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
        )
        return Conditioning(embeds, pooled)

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels, height, width, self.dtype, self.device, generator(seed)
        )
        return latents, {}

    def timesteps(self, steps, latents):
        scheduler, kwargs = self.pipe.scheduler, {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            kwargs["mu"] = resolution_shift(scheduler, (latents.shape[-2] // patch) * (latents.shape[-1] // patch), 1.16)
        return retrieve_timesteps(scheduler, steps, self.device, **kwargs)[0]

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        hidden = tr.pos_embed(latents).contiguous()
        temb = tr.time_text_embed(t.expand(latents.shape[0]), cond.pooled)
        text = tr.context_embedder(cond.embeds)
        return Streams(hidden, text), {"temb": temb}, {"joint_attention_kwargs": attention_kwargs}, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        hidden = tr.proj_out(tr.norm_out(image, post["temb"]))
        p, c = tr.config.patch_size, tr.out_channels
        h, w = latents.shape[-2] // p, latents.shape[-1] // p
        hidden = hidden.reshape(hidden.shape[0], h, w, p, p, c)
        return hidden.permute(0, 5, 1, 3, 2, 4).reshape(hidden.shape[0], c, h * p, w * p)

    def layout(self, latents, extras):
        p = self.transformer.config.patch_size
        return LatentLayout(latents.shape[-2] // p, latents.shape[-1] // p, patch=p)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """``[77 CLIP tokens, T5 tokens]``, CLIP reading ``<sot> content <eot> <pad>...``: background = ``<sot>``
        (the paper's start token), content = the CLIP content tokens (the T5 tokens repeat the same words)."""
        n = len(self.pipe.tokenizer(prompt, max_length=self.pipe.tokenizer_max_length, truncation=True).input_ids)
        return TextRoles(tuple(range(1, n - 1)), (0,), text_len)
