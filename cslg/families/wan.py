"""Wan 2.1 / 2.2 text-to-video (``WanPipeline``): the first video family. Latents ``[B, C, F, H, W]`` cut into
``1 x 2 x 2`` patches, tokens frame by frame; cross-attention DiT blocks in ``blocks`` returning the video tokens
(text enters every block's cross-attention ``attn2``, the self-attention ``attn1`` runs over all frames' tokens);
UMT5 text, zero-padded and unmasked; flow prediction with the UniPC scheduler the checkpoints ship; CFG as two
forwards; the Wan VAE decodes frames (Wan 2.2 TI2V's 48-channel VAE too). Skipping blocks in the perturbed pass is spatio-temporal skip guidance (STG's ``skip`` mode)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
from transformers import UMT5Config, UMT5EncoderModel

from .base import IMAGE_ONLY, Adapter, BlockList, generator
from .layout import AttentionLayout, Conditioning, LatentLayout, Streams, TextRoles
from .tiny import TinySize, seeded, t5_tokenizer


class WanAdapter(Adapter):
    name = "wan"
    pipeline_classes = (WanPipeline,)
    block_lists = (BlockList("blocks", "", "blocks", IMAGE_ONLY),)
    tiny_presets = ("tiny-wan", "tiny-wan22")
    default_cfg_scale = 5.0  # WanPipeline's guidance_scale
    default_max_sequence_length = 512  # WanPipeline's; the text is zero-padded to it and not masked
    video = True
    default_frames = 81  # WanPipeline's num_frames
    # Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json at its 480x832, 81 frames, 50 steps
    released = {
        "transformer": dict(patch_size=(1, 2, 2), num_attention_heads=12, attention_head_dim=128, in_channels=16,
                            out_channels=16, text_dim=4096, freq_dim=256, ffn_dim=8960, num_layers=30,
                            cross_attn_norm=True, qk_norm="rms_norm_across_heads", eps=1e-6, rope_max_seq_len=1024),
        "height": 480, "width": 832, "frames": 81, "steps": 50, "text_tokens": 512,
    }

    def __init__(self, pipe, guidance=None, frames=None):
        if getattr(pipe, "transformer_2", None) is not None:
            raise ValueError("WanPipeline with a transformer_2 (Wan 2.2 A14B's two experts, switched at "
                             "boundary_ratio) is not supported: guide each expert's pipeline on its own")
        super().__init__(pipe, guidance, frames)

    def attention_output(self, block, convention):
        return block.attn1.to_out[0], lambda output, n_image: output  # the self-attention output

    def attention_calls(self, block, convention):
        return [(block.attn1, AttentionLayout("self")), (block.attn2, AttentionLayout("cross"))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, _ = self.pipe.encode_prompt(list(prompts), do_classifier_free_guidance=False,
                                            max_sequence_length=max_sequence_length, device=self.device)
        return Conditioning(embeds.to(self.dtype))

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(1, self.transformer.config.in_channels, height, width, self.frames,
                                            torch.float32, self.device, generator(seed))
        return latents, {}

    def timesteps(self, steps, latents):
        scheduler = self.pipe.scheduler
        scheduler.set_timesteps(steps, device=self.device)
        scheduler.set_begin_index(0)
        return scheduler.timesteps

    def embed(self, latents, t, cond, extras, attention_kwargs):
        # attention_kwargs: Wan's blocks take none (its forward only applies the LoRA scale, as the executor does)
        tr = self.transformer
        x = latents.to(tr.dtype)
        rotary = tr.rope(x)
        hidden = tr.patch_embedding(x).flatten(2).transpose(1, 2).contiguous()
        # Wan 2.2 TI2V's pipeline (expand_timesteps) gives every token the timestep t in text-to-video: the same
        # computation as one timestep per video, without its [B, tokens, 6, dim] modulation tensors
        temb, proj, text, _ = tr.condition_embedder(t.expand(hidden.shape[0]), cond.embeds, None)
        proj = proj.unflatten(1, (6, -1))
        lane = {"encoder_hidden_states": text, "temb": proj}
        return Streams(hidden), lane, {"rotary_emb": rotary}, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        shift, scale = (tr.scale_shift_table + post["temb"].unsqueeze(1)).chunk(2, dim=1)
        hidden = tr.proj_out((tr.norm_out(image.float()) * (1 + scale) + shift).type_as(image))
        pt, ph, pw = tr.config.patch_size
        f, h, w = latents.shape[2] // pt, latents.shape[3] // ph, latents.shape[4] // pw
        hidden = hidden.reshape(image.shape[0], f, h, w, pt, ph, pw, -1).permute(0, 7, 1, 4, 2, 5, 3, 6)
        return hidden.flatten(6, 7).flatten(4, 5).flatten(2, 3)

    def layout(self, latents, extras):
        pt, ph, pw = self.transformer.config.patch_size
        if pt != 1 or ph != pw:
            raise ValueError(f"wan: token maps need 1 x p x p patches, the transformer has {(pt, ph, pw)}")
        frames = latents.shape[2]
        return LatentLayout(frames * (latents.shape[3] // ph), latents.shape[4] // pw, patch=ph, frames=frames)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """UMT5, ``content </s>`` then zero embeddings up to ``text_len`` (unmasked): background = the padding
        positions, or ``</s>`` when the prompt fills the sequence; content = the tokens before ``</s>``."""
        from diffusers.pipelines.wan.pipeline_wan import prompt_clean

        n = min(len(self.pipe.tokenizer(prompt_clean(prompt), max_length=text_len, truncation=True).input_ids),
                text_len)
        return TextRoles(tuple(range(n - 1)), tuple(range(n, text_len)) or (n - 1,), text_len)

    def decode(self, latents, height, width, output_type="pil"):
        """Videos, as ``WanPipeline`` decodes them: ``pil`` a list of frame lists, ``np`` ``[N, F, H, W, 3]``."""
        vae = self.pipe.vae
        latents = latents.to(vae.dtype)
        mean = torch.tensor(vae.config.latents_mean).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        inv_std = 1.0 / torch.tensor(vae.config.latents_std).view(1, vae.config.z_dim, 1, 1, 1).to(latents)
        video = vae.decode(latents / inv_std + mean, return_dict=False)[0]
        return self.pipe.video_processor.postprocess_video(video, output_type=output_type)

    def check_settings(self, height, width, max_sequence_length):
        super().check_settings(height, width, max_sequence_length)
        temporal = self.pipe.vae_scale_factor_temporal
        if self.frames < 1 or (self.frames - 1) % temporal:
            raise ValueError(f"--frames {self.frames}: wan needs {temporal}k+1 frames (1, {temporal + 1}, "
                             f"{2 * temporal + 1}, ...)")

    def random_conditioning(self, n, text_tokens, seed=0):
        return Conditioning(self.randn(n, text_tokens, self.transformer.config.text_dim, seed=seed))

    def pipeline_inputs(self, cond, negative, cfg_scale):
        return {"prompt_embeds": cond.embeds, "negative_prompt_embeds": negative.embeds, "guidance_scale": cfg_scale,
                "num_frames": self.frames}

    def size_multiple(self) -> int:
        return self.pipe.vae_scale_factor_spatial * self.transformer.config.patch_size[1]

    def default_height_width(self) -> tuple[int, int]:
        return 480, 832  # WanPipeline's defaults

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_wan(size, seed, wan22=preset == "tiny-wan22")


def umt5_encoder(size: TinySize, seed: int, vocab_size: int) -> UMT5EncoderModel:
    """A small UMT5 encoder (per-layer relative attention biases, gated GELU, as umt5-xxl)."""
    config = UMT5Config(vocab_size=vocab_size, d_model=size.t5_dim, d_kv=8, d_ff=2 * size.t5_dim, num_layers=2,
                        num_heads=4, relative_attention_num_buckets=8, feed_forward_proj="gated-gelu",
                        decoder_start_token_id=0, pad_token_id=0, eos_token_id=1, tie_word_embeddings=False)
    return seeded(seed, lambda: UMT5EncoderModel(config))


def wan_vae(size: TinySize, seed: int, wan22: bool = False) -> AutoencoderKLWan:
    """The Wan 2.1 VAE at small widths (16 latent channels, 8x spatial and 4x temporal compression, as released);
    ``wan22``: the Wan 2.2 VAE (48 channels, residual, 2x2 pixel patches: 16x spatial)."""
    width = min(size.vae_channels)
    kwargs = dict(base_dim=width, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
    if wan22:
        kwargs.update(z_dim=48, is_residual=True, in_channels=12, out_channels=12, patch_size=2,
                      scale_factor_spatial=16, latents_mean=[0.0] * 48, latents_std=[1.0] * 48)
    return seeded(seed, lambda: AutoencoderKLWan(**kwargs))


def build_tiny_wan(size: TinySize = TinySize(), seed: int = 0, wan22: bool = False) -> WanPipeline:
    """A Wan-2.1-T2V-like pipeline: ``double_blocks`` blocks (self-attention over every frame's tokens with 3-axis
    RoPE, cross-attention to UMT5), the Wan VAE (16 latent channels), the UniPC flow scheduler the checkpoints ship
    (``flow_shift=3.0``). ``wan22``: Wan-2.2-TI2V-5B-like (one timestep per token, ``expand_timesteps``; the Wan
    2.2 VAE with 48 latent channels)."""
    tok = t5_tokenizer()
    channels = 48 if wan22 else 16
    transformer = seeded(
        seed + 1,
        lambda: WanTransformer3DModel(
            patch_size=(1, 2, 2),
            num_attention_heads=size.heads,
            attention_head_dim=size.head_dim,
            in_channels=channels,
            out_channels=channels,
            text_dim=size.t5_dim,
            freq_dim=32,
            ffn_dim=4 * size.heads * size.head_dim,
            num_layers=size.double_blocks,
            cross_attn_norm=True,
            qk_norm="rms_norm_across_heads",
            rope_max_seq_len=32,
        ),
    )
    scheduler = UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0,
                                        num_train_timesteps=1000)
    return WanPipeline(tokenizer=tok, text_encoder=umt5_encoder(size, seed + 4, len(tok)),
                       vae=wan_vae(size, seed + 2, wan22), scheduler=scheduler, transformer=transformer,
                       expand_timesteps=wan22)
