"""PixArt-Σ (``PixArtSigmaPipeline``): cross-attention DiT blocks returning one tensor (the image tokens; text
enters every block's cross-attention); spatial latents, 2x2 patches; learned-sigma output (the first half of
the channels is the noise prediction); CFG batched; DPM-Solver."""

from __future__ import annotations

from typing import Sequence

from diffusers import PixArtSigmaPipeline
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps

from .base import IMAGE, Adapter, AttentionLayout, BlockList, Conditioning, LatentLayout, Streams, TextRoles, generator

NO_CONDITIONS = {"resolution": None, "aspect_ratio": None}


class PixArtSigmaAdapter(Adapter):
    name = "pixart-sigma"
    pipeline_classes = (PixArtSigmaPipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks", IMAGE),)
    default_max_sequence_length = 300
    pag_default_layers = ("1",)  # PixArtSigmaPAGPipeline's default "blocks.1"

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

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels, height, width, self.dtype, self.device, generator(seed)
        )
        return latents, {}

    def timesteps(self, steps, latents):
        return retrieve_timesteps(self.pipe.scheduler, steps, self.device)[0]

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch = latents.shape[0]
        hidden = tr.pos_embed(latents)
        timestep, embedded = tr.adaln_single(t.expand(batch), NO_CONDITIONS, batch_size=batch, hidden_dtype=hidden.dtype)
        text = tr.caption_projection(cond.embeds).view(batch, -1, hidden.shape[-1])
        mask = ((1 - cond.mask.to(hidden.dtype)) * -10000.0).unsqueeze(1)  # as the transformer turns it into a bias
        lane = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": timestep}
        shared = {"attention_mask": None, "cross_attention_kwargs": attention_kwargs, "class_labels": None}
        return Streams(hidden), lane, shared, {"embedded_timestep": embedded}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        shift, scale = (tr.scale_shift_table[None] + post["embedded_timestep"][:, None].to(image.device)).chunk(2, dim=1)
        hidden = tr.proj_out(tr.norm_out(image) * (1 + scale) + shift)
        p, c = tr.config.patch_size, tr.out_channels
        h, w = latents.shape[-2] // p, latents.shape[-1] // p
        hidden = hidden.reshape(hidden.shape[0], h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
        out = hidden.reshape(hidden.shape[0], c, h * p, w * p)
        if c // 2 == latents.shape[1]:  # learned sigma: keep the noise prediction, as the pipeline does
            out = out.chunk(2, dim=1)[0]
        return out

    def layout(self, latents, extras):
        p = self.transformer.config.patch_size
        return LatentLayout(latents.shape[-2] // p, latents.shape[-1] // p, patch=p)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """T5, ``content </s> <pad>...`` with the padding masked out of the cross-attention: background = ``</s>``,
        content = the tokens before it (of the lower-cased prompt, as the pipeline preprocesses it)."""
        text = self.pipe._text_preprocessing(prompt, clean_caption=False)[0]
        n = min(len(self.pipe.tokenizer(text, max_length=text_len, truncation=True).input_ids), text_len)
        return TextRoles(tuple(range(n - 1)), (n - 1,), text_len)

    def size_multiple(self) -> int:
        return max(8, self.pipe.vae_scale_factor * self.transformer.config.patch_size)
