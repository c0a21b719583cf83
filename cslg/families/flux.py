"""FLUX.1 (``FluxPipeline``, dev and schnell): double-stream blocks then single-stream blocks, both returning
``(text, image)``; text tokens first in the joint sequence; packed 2x2 latents; a distilled guidance
embedding on dev (true CFG runs a negative-prompt pass)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import FlowMatchEulerDiscreteScheduler, FluxImg2ImgPipeline, FluxPipeline, FluxTransformer2DModel

from .base import Adapter, BlockList, flow_timesteps, generator
from .layout import AttentionLayout, Conditioning, LatentLayout, Streams, TextRoles
from .tiny import TinySize, clip_text_encoder, clip_tokenizer, kl_vae, seeded, t5_encoder, t5_tokenizer


class FluxAdapter(Adapter):
    name = "flux"
    pipeline_classes = (FluxPipeline,)
    img2img_pipeline = FluxImg2ImgPipeline
    block_lists = (
        BlockList("transformer_blocks", "", "double-stream blocks"),
        BlockList("single_transformer_blocks", "s", "single-stream blocks"),
    )
    tiny_presets = ("tiny-flux",)
    has_distilled_guidance = True
    default_guidance = 3.5
    default_max_sequence_length = 512
    # black-forest-labs/FLUX.1-dev transformer/config.json, at FluxPipeline's 1024x1024 and 28 steps
    released = {
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                            guidance_embeds=True, axes_dims_rope=(16, 56, 56)),
        "height": 1024, "width": 1024, "steps": 28, "text_tokens": 512,
    }

    def attention_output(self, block, convention):
        if convention.attr == "single_transformer_blocks":  # [text, image] attention output before proj_out
            return block.attn, lambda output, n_image: output[:, -n_image:]
        return super().attention_output(block, convention)

    def attention_calls(self, block, convention):
        return [(block.attn, AttentionLayout("joint", text_first=True))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, pooled, text_ids = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, device=self.device, max_sequence_length=max_sequence_length
        )
        return Conditioning(embeds, pooled, shared={"text_ids": text_ids})

    def initial_noise(self, seed, height, width):
        latents, img_ids = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels // 4, height, width, self.dtype, self.device, generator(seed)
        )
        return latents, {"img_ids": img_ids}

    def encode_start(self, i2i, pixels, t, seed, height, width):
        channels = self.transformer.config.in_channels // 4
        pixels = pixels.to(torch.float32)  # as FluxImg2ImgPipeline casts its preprocessed image
        return i2i.prepare_latents(pixels, t, 1, channels, height, width, self.dtype, self.device, generator(seed))[0]

    def timesteps(self, steps, latents):
        return flow_timesteps(self.pipe.scheduler, steps, self.device, latents.shape[1], 1.15)

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        hidden = tr.x_embedder(latents)
        timestep = t.expand(latents.shape[0]).to(latents.dtype) / 1000  # as FluxPipeline passes it
        timestep = timestep.to(hidden.dtype) * 1000
        if tr.config.guidance_embeds:
            guidance = torch.full([latents.shape[0]], self.guidance, device=latents.device, dtype=torch.float32)
            temb = tr.time_text_embed(timestep, guidance.to(hidden.dtype) * 1000, cond.pooled)
        else:
            temb = tr.time_text_embed(timestep, cond.pooled)
        text = tr.context_embedder(cond.embeds)
        rope = tr.pos_embed(torch.cat((cond.shared["text_ids"], extras["img_ids"]), dim=0))
        shared = {"image_rotary_emb": rope, "joint_attention_kwargs": attention_kwargs}
        return Streams(hidden, text), {"temb": temb}, shared, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        return tr.proj_out(tr.norm_out(image, post["temb"]))

    def layout(self, latents, extras):
        ids = extras["img_ids"]  # (0, row, col) per packed token
        return LatentLayout(int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1, packed=4)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """T5 only, ``content </s> <pad>...``: background = the padding tokens, or ``</s>`` when the prompt
        fills the whole sequence; content = the tokens before ``</s>``."""
        n = len(self.pipe.tokenizer_2(prompt, max_length=text_len, truncation=True).input_ids)  # content + </s>
        background = tuple(range(n, text_len)) or (n - 1,)
        return TextRoles(tuple(range(n - 1)), background, text_len)

    def unpack(self, latents, height, width):
        return self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor)

    def random_conditioning(self, n, text_tokens, seed=0):
        config = self.transformer.config
        text_ids = torch.zeros(text_tokens, 3, device=self.device, dtype=self.dtype)
        return Conditioning(self.randn(n, text_tokens, config.joint_attention_dim, seed=seed),
                            self.randn(n, config.pooled_projection_dim, seed=seed + 1), shared={"text_ids": text_ids})

    def pipeline_inputs(self, cond, negative, cfg_scale):
        return {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled, "true_cfg_scale": cfg_scale,
                "negative_prompt_embeds": negative.embeds, "negative_pooled_prompt_embeds": negative.pooled,
                "guidance_scale": self.guidance}

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_flux(size, seed)


def build_tiny_flux(size: TinySize = TinySize(), seed: int = 0) -> FluxPipeline:
    """A guidance-distilled FLUX.1-dev-like pipeline (``guidance_embeds=True``)."""
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    rope = size.head_dim // 4
    transformer = seeded(
        seed + 1,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * size.latent_channels,
            num_layers=size.double_blocks,
            num_single_layers=size.single_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=size.t5_dim,
            pooled_projection_dim=size.text_dim,
            guidance_embeds=True,
            axes_dims_rope=(size.head_dim - 2 * rope, rope, rope),
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=kl_vae(size, seed + 2, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=clip_text_encoder(size, seed + 3, with_projection=False, vocab_size=len(clip_tok)),
        tokenizer=clip_tok,
        text_encoder_2=t5_encoder(size, seed + 4, vocab_size=len(t5_tok)),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )
