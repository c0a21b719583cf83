"""Stable Diffusion 3 / 3.5 (``StableDiffusion3Pipeline``): joint blocks returning ``(text, image)`` (the last
one ``(None, image)``); image tokens first in the joint sequence; spatial latents, 2x2 patches; CFG."""

from __future__ import annotations

from typing import Sequence

from diffusers import (
    FlowMatchEulerDiscreteScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3Pipeline,
)
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

from .base import BlockList, SpatialAdapter, generator, resolution_shift
from .layout import AttentionLayout, Conditioning, Streams, TextRoles
from .tiny import TinySize, clip_text_encoder, clip_tokenizer, kl_vae, seeded, t5_encoder, t5_tokenizer


class SD3Adapter(SpatialAdapter):
    name = "sd3"
    pipeline_classes = (StableDiffusion3Pipeline,)
    img2img_pipeline = StableDiffusion3Img2ImgPipeline
    block_lists = (BlockList("transformer_blocks", "", "joint blocks"),)
    tiny_presets = ("tiny-sd3", "tiny-sd35")
    default_cfg_scale = 7.0  # StableDiffusion3Pipeline's guidance_scale
    pag_default_layers = ("1",)  # StableDiffusion3PAGPipeline's default "blocks.1"
    # stabilityai/stable-diffusion-3.5-large transformer/config.json, at 1024x1024 and 28 steps; text: 77 CLIP + 256
    # T5 tokens
    released = {
        "transformer": dict(sample_size=128, patch_size=2, in_channels=16, num_layers=38, attention_head_dim=64,
                            num_attention_heads=38, joint_attention_dim=4096, caption_projection_dim=2432,
                            pooled_projection_dim=2048, out_channels=16, pos_embed_max_size=192, qk_norm="rms_norm"),
        "height": 1024, "width": 1024, "steps": 28, "text_tokens": 77 + 256,
    }

    def attention_calls(self, block, convention):
        # SD3.5's attn2 (a second self-attention of the image tokens) is not a joint call: not perturbed
        return [(block.attn, AttentionLayout("joint", text_first=False))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, _, pooled, _ = self.pipe.encode_prompt(
            prompt=list(prompts), prompt_2=None, prompt_3=None, device=self.device,
            do_classifier_free_guidance=False, max_sequence_length=max_sequence_length,
        )
        return Conditioning(embeds, pooled)

    def timesteps(self, steps, latents):
        scheduler, kwargs = self.pipe.scheduler, {}
        if scheduler.config.get("use_dynamic_shifting", None):
            patch = self.transformer.config.patch_size
            kwargs["mu"] = resolution_shift(scheduler, (latents.shape[-2] // patch) * (latents.shape[-1] // patch), 1.16)
        return retrieve_timesteps(scheduler, steps, self.device, **kwargs)[0]

    def encode_start(self, i2i, pixels, t, seed, height, width):
        return i2i.prepare_latents(pixels, t, 1, 1, self.dtype, self.device, generator(seed))

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        hidden = tr.pos_embed(latents).contiguous()
        temb = tr.time_text_embed(t.expand(latents.shape[0]), cond.pooled)
        text = tr.context_embedder(cond.embeds)
        return Streams(hidden, text), {"temb": temb}, {"joint_attention_kwargs": attention_kwargs}, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        return self.unpatchify(tr.proj_out(tr.norm_out(image, post["temb"])), latents)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """``[77 CLIP tokens, T5 tokens]``, CLIP reading ``<sot> content <eot> <pad>...``: background = ``<sot>``
        (the paper's start token), content = the CLIP content tokens (the T5 tokens repeat the same words)."""
        n = len(self.pipe.tokenizer(prompt, max_length=self.pipe.tokenizer_max_length, truncation=True).input_ids)
        return TextRoles(tuple(range(1, n - 1)), (0,), text_len)

    def random_conditioning(self, n, text_tokens, seed=0):
        config = self.transformer.config
        return Conditioning(self.randn(n, text_tokens, config.joint_attention_dim, seed=seed),
                            self.randn(n, config.pooled_projection_dim, seed=seed + 1))

    def pipeline_inputs(self, cond, negative, cfg_scale):
        return {"prompt_embeds": cond.embeds, "pooled_prompt_embeds": cond.pooled, "guidance_scale": cfg_scale,
                "negative_prompt_embeds": negative.embeds, "negative_pooled_prompt_embeds": negative.pooled}

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_sd3(size, seed, sd35=preset == "tiny-sd35")


def build_tiny_sd3(size: TinySize = TinySize(), seed: int = 0, sd35: bool = False) -> StableDiffusion3Pipeline:
    """An SD3-medium-like pipeline; ``sd35=True`` adds SD3.5's dual-attention layers and RMS qk-norm."""
    clip_tok = clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = seeded(
        seed + 1,
        lambda: SD3Transformer2DModel(
            sample_size=size.sample_size,
            patch_size=2,
            in_channels=size.latent_channels,
            num_layers=size.double_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=size.t5_dim,
            caption_projection_dim=size.heads * size.head_dim,
            pooled_projection_dim=2 * size.text_dim,
            out_channels=size.latent_channels,
            pos_embed_max_size=size.sample_size,
            dual_attention_layers=tuple(range(size.double_blocks // 2)) if sd35 else (),
            qk_norm="rms_norm" if sd35 else None,
        ),
    )
    return StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
        vae=kl_vae(size, seed + 2, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=clip_text_encoder(size, seed + 3, with_projection=True, vocab_size=len(clip_tok)),
        tokenizer=clip_tok,
        text_encoder_2=clip_text_encoder(size, seed + 5, with_projection=True, vocab_size=len(clip_tok)),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=t5_encoder(size, seed + 4, vocab_size=len(t5_tok)),
        tokenizer_3=t5_tok,
        transformer=transformer,
    )
