"""PixArt-Σ (``PixArtSigmaPipeline``) and PixArt-α (``PixArtAlphaPipeline``): cross-attention DiT blocks returning
one tensor (the image tokens; text enters every block's cross-attention); spatial latents, 2x2 patches;
learned-sigma output (the first half of the channels is the noise prediction); CFG batched; DPM-Solver. PixArt-α's
1024 px checkpoint (``sample_size`` 128) adds the image's resolution and aspect ratio to the timestep embedding."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import DPMSolverMultistepScheduler, PixArtAlphaPipeline, PixArtSigmaPipeline, PixArtTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

from .base import IMAGE_ONLY, BlockList, SpatialAdapter
from .layout import AttentionLayout, Conditioning, Streams, TextRoles
from .tiny import TinySize, kl_vae, seeded, t5_encoder, t5_tokenizer

NO_CONDITIONS = {"resolution": None, "aspect_ratio": None}


class PixArtSigmaAdapter(SpatialAdapter):
    name = "pixart-sigma"
    pipeline_classes = (PixArtSigmaPipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks", IMAGE_ONLY),)
    tiny_presets = ("tiny-pixart-sigma",)
    default_cfg_scale = 4.5  # PixArtSigmaPipeline's guidance_scale
    default_max_sequence_length = 300
    pag_default_layers = ("1",)  # PixArtSigmaPAGPipeline's default "blocks.1"
    # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS transformer/config.json, at 1024x1024 and PixArtSigmaPipeline's 20 steps
    released = {
        "transformer": dict(num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8,
                            num_layers=28, cross_attention_dim=1152, caption_channels=4096, sample_size=128,
                            patch_size=2, norm_type="ada_norm_single", norm_elementwise_affine=False, norm_eps=1e-6,
                            attention_bias=True, activation_fn="gelu-approximate", num_embeds_ada_norm=1000,
                            use_additional_conditions=False, interpolation_scale=2),
        "height": 1024, "width": 1024, "steps": 20, "text_tokens": 300,
    }

    def attention_output(self, block, convention):
        return block.attn1.to_out[0], lambda output, n_image: output  # the self-attention output

    def attention_calls(self, block, convention):
        return [(block.attn1, AttentionLayout("self")), (block.attn2, AttentionLayout("cross"))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, device=self.device, clean_caption=False,
            max_sequence_length=max_sequence_length,
        )
        return Conditioning(embeds, None, mask)

    def timesteps(self, steps, latents):
        return retrieve_timesteps(self.pipe.scheduler, steps, self.device)[0]

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch = latents.shape[0]
        hidden = tr.pos_embed(latents)
        conditions = NO_CONDITIONS
        if tr.use_additional_conditions:  # PixArt-α 1024: (height, width) and height / width of the image, in pixels
            height, width = (n * self.pipe.vae_scale_factor for n in latents.shape[-2:])
            like = dict(dtype=cond.embeds.dtype, device=latents.device)
            conditions = {"resolution": torch.tensor([[height, width]], **like).expand(batch, 2),
                          "aspect_ratio": torch.tensor([[height / width]], **like).expand(batch, 1)}
        timestep, embedded = tr.adaln_single(t.expand(batch), conditions, batch_size=batch, hidden_dtype=hidden.dtype)
        text = tr.caption_projection(cond.embeds).view(batch, -1, hidden.shape[-1])
        mask = ((1 - cond.mask.to(hidden.dtype)) * -10000.0).unsqueeze(1)  # as the transformer turns it into a bias
        lane = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": timestep}
        shared = {"attention_mask": None, "cross_attention_kwargs": attention_kwargs, "class_labels": None}
        return Streams(hidden), lane, shared, {"embedded_timestep": embedded}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        shift, scale = (tr.scale_shift_table[None] + post["embedded_timestep"][:, None].to(image.device)).chunk(2, dim=1)
        out = self.unpatchify(tr.proj_out(tr.norm_out(image) * (1 + scale) + shift), latents)
        if out.shape[1] // 2 == latents.shape[1]:  # learned sigma: keep the noise prediction, as the pipeline does
            out = out.chunk(2, dim=1)[0]
        return out

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """T5, ``content </s> <pad>...`` with the padding masked out of the cross-attention: background = ``</s>``,
        content = the tokens before it (of the lower-cased prompt, as the pipeline preprocesses it)."""
        text = self.pipe._text_preprocessing(prompt, clean_caption=False)[0]
        n = min(len(self.pipe.tokenizer(text, max_length=text_len, truncation=True).input_ids), text_len)
        return TextRoles(tuple(range(n - 1)), (n - 1,), text_len)

    def random_conditioning(self, n, text_tokens, seed=0):
        embeds = self.randn(n, text_tokens, self.transformer.config.caption_channels, seed=seed)
        return Conditioning(embeds, None, torch.ones(n, text_tokens, dtype=torch.long, device=embeds.device))

    def pipeline_inputs(self, cond, negative, cfg_scale):
        return {"prompt_embeds": cond.embeds, "prompt_attention_mask": cond.mask, "guidance_scale": cfg_scale,
                "negative_prompt_embeds": negative.embeds, "negative_prompt_attention_mask": negative.mask,
                "negative_prompt": None, "use_resolution_binning": False}

    def size_multiple(self) -> int:
        return max(8, self.pipe.vae_scale_factor * self.transformer.config.patch_size)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_pixart_sigma(size, seed)


class PixArtAlphaAdapter(PixArtSigmaAdapter):
    """PixArt-α: PixArt-Σ's blocks and sampling, T5 prompts of 120 tokens, the resolution conditions at 1024 px."""

    name = "pixart-alpha"
    pipeline_classes = (PixArtAlphaPipeline,)
    tiny_presets = ("tiny-pixart-alpha",)
    default_max_sequence_length = 120  # PixArtAlphaPipeline's
    # PixArt-alpha/PixArt-XL-2-1024-MS (upstream CSLG's PixArt): transformer/config.json, 20 steps at 1024 px
    released = {
        "transformer": dict(
            num_attention_heads=16, attention_head_dim=72, in_channels=4, out_channels=8, num_layers=28,
            cross_attention_dim=1152, caption_channels=4096, sample_size=128, patch_size=2, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6, attention_bias=True, activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
        ),
        "height": 1024, "width": 1024, "steps": 20,
    }

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_pixart_alpha(size, seed)


def build_tiny_pixart_sigma(size: TinySize = TinySize(), seed: int = 0) -> PixArtSigmaPipeline:
    """A PixArt-Σ-like pipeline: ``double_blocks`` DiT blocks (self-attention ``attn1``, cross-attention ``attn2``
    to T5), learned-sigma output (``out_channels = 2 * latent_channels``; the pipeline keeps the first half), the
    SDXL-VAE scaling factor and the DPM-Solver++ scheduler PixArt-Σ ships with. ``sample_size`` is the latent grid
    of the default image, as for SD3. Call it with ``use_resolution_binning=False`` and ``clean_caption=False``."""
    return _build_tiny_pixart(PixArtSigmaPipeline, size, seed, size.sample_size, False, 0.13025, size.heads)


def build_tiny_pixart_alpha(size: TinySize = TinySize(), seed: int = 0) -> PixArtAlphaPipeline:
    """A PixArt-α-1024-like pipeline: PixArt-Σ's tiny blocks with ``sample_size`` 128, which makes the transformer
    take the image's resolution and aspect ratio (``use_additional_conditions``, as PixArt-XL-2-1024-MS) and the
    pipeline pass them; the SD VAE's scaling factor; ``heads + 1`` heads (the width must split in three, as
    1152: the resolution and the aspect ratio get a third of it each). Call it with ``use_resolution_binning=False``
    and ``clean_caption=False``."""
    return _build_tiny_pixart(PixArtAlphaPipeline, size, seed, 128, True, 0.18215, size.heads + 1)


def _build_tiny_pixart(cls, size: TinySize, seed: int, sample_size: int, additional_conditions: bool,
                       scaling_factor: float, heads: int):
    tok = t5_tokenizer()
    inner = heads * size.head_dim
    transformer = seeded(
        seed + 1,
        lambda: PixArtTransformer2DModel(
            num_attention_heads=heads,
            attention_head_dim=size.head_dim,
            in_channels=size.latent_channels,
            out_channels=2 * size.latent_channels,
            num_layers=size.double_blocks,
            cross_attention_dim=inner,
            caption_channels=size.t5_dim,
            sample_size=sample_size,
            patch_size=2,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            use_additional_conditions=additional_conditions,
        ),
    )
    scheduler = DPMSolverMultistepScheduler(  # PixArt-XL-2-1024-MS's and PixArt-Sigma-XL-2-1024-MS's scheduler_config
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="epsilon",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        thresholding=False,
        use_karras_sigmas=False,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return cls(
        tokenizer=tok,
        text_encoder=t5_encoder(size, seed + 4, vocab_size=len(tok)),
        vae=kl_vae(size, seed + 2, scaling_factor=scaling_factor, shift_factor=None),
        transformer=transformer,
        scheduler=scheduler,
    )
