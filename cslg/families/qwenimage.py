"""Qwen-Image (``QwenImagePipeline``): MMDiT blocks returning ``(text, image)``; text tokens first in the joint
sequence; packed 2x2 latents; true CFG with a negative prompt, the combined prediction rescaled per token to
the norm of the conditional one; the Qwen2.5-VL prompt template (its first 34 tokens dropped)."""

from __future__ import annotations

from typing import Sequence

import inspect

import torch
from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImagePipeline, QwenImageTransformer2DModel
from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Tokenizer

from .base import Adapter, BlockList, flow_timesteps, generator
from .layout import AttentionLayout, Conditioning, LatentLayout, Streams, TextRoles
from .tiny import TinySize, qwen_tokenizer, seeded


class QwenImageAdapter(Adapter):
    name = "qwenimage"
    pipeline_classes = (QwenImagePipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks"),)
    tiny_presets = ("tiny-qwenimage",)
    default_cfg_scale = 4.0  # QwenImagePipeline's true_cfg_scale
    default_max_sequence_length = 512
    max_sequence_length_limit = 1024
    # Qwen/Qwen-Image transformer/config.json, at QwenImagePipeline's 1024x1024 and 50 steps; a 128-token prompt
    released = {
        "transformer": dict(patch_size=2, in_channels=64, out_channels=16, num_layers=60, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=3584, guidance_embeds=False,
                            axes_dims_rope=(16, 56, 56)),
        "height": 1024, "width": 1024, "steps": 50, "text_tokens": 128,
    }

    def attention_calls(self, block, convention):
        return [(block.attn, AttentionLayout("joint", text_first=True))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, mask = self.pipe.encode_prompt(
            prompt=list(prompts), device=self.device, max_sequence_length=max_sequence_length
        )
        return Conditioning(embeds, None, mask)

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels // 4, height, width, self.dtype, self.device, generator(seed)
        )
        vsf = self.pipe.vae_scale_factor
        return latents, {"img_shape": (1, height // vsf // 2, width // vsf // 2)}

    def timesteps(self, steps, latents):
        return flow_timesteps(self.pipe.scheduler, steps, self.device, latents.shape[1], 0.9)

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        hidden = tr.img_in(latents)
        timestep = (t.expand(latents.shape[0]).to(latents.dtype) / 1000).to(hidden.dtype)  # as the pipeline passes it
        text = tr.txt_in(tr.txt_norm(cond.embeds))
        text_len, _, mask = compute_text_seq_len_from_mask(text, cond.mask)
        temb = tr.time_text_embed(timestep, hidden)
        rope = tr.pos_embed([[extras["img_shape"]]] * latents.shape[0], max_txt_seq_len=text_len, device=hidden.device)
        lane = {"temb": temb} if mask is None else {"temb": temb, "encoder_hidden_states_mask": mask}
        shared = {"image_rotary_emb": rope, "joint_attention_kwargs": attention_kwargs}
        if mask is None:
            shared["encoder_hidden_states_mask"] = None
        return Streams(hidden, text), lane, shared, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        return tr.proj_out(tr.norm_out(image, post["temb"]))

    def postprocess_cfg(self, v, c):
        """QwenImagePipeline's true CFG: the guided prediction rescaled per token to the norm of ``c``."""
        return v * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(v, dim=-1, keepdim=True))

    def random_conditioning(self, n, text_tokens, seed=0):
        return Conditioning(self.randn(n, text_tokens, self.transformer.config.joint_attention_dim, seed=seed))

    def pipeline_inputs(self, cond, negative, cfg_scale):
        ones = torch.ones(cond.embeds.shape[:2], dtype=torch.long, device=cond.embeds.device)  # no padding
        return {"prompt_embeds": cond.embeds, "prompt_embeds_mask": ones, "negative_prompt_embeds": negative.embeds,
                "negative_prompt_embeds_mask": ones, "true_cfg_scale": cfg_scale}

    def layout(self, latents, extras):
        _, h, w = extras["img_shape"]
        return LatentLayout(h, w, packed=4)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """The prompt's tokens, then the template's closing tokens (``<|im_end|>`` ...) as background; padding of
        batched rows is masked out of the attention."""
        pipe = self.pipe
        template = pipe.prompt_template_encode
        ids = pipe.tokenizer(template.format(prompt)).input_ids[pipe.prompt_template_encode_start_idx:]
        closing = len(pipe.tokenizer(template.split("{}")[1]).input_ids)
        n = min(len(ids), text_len)
        content = tuple(range(max(0, n - closing)))
        return TextRoles(content, tuple(range(len(content), text_len)), text_len)

    def decode(self, latents, height, width, output_type="pil"):
        """QwenImagePipeline's decode: unpack, undo the per-channel latent normalisation, one frame."""
        vae = self.pipe.vae
        latents = self.pipe._unpack_latents(latents, height, width, self.pipe.vae_scale_factor).to(vae.dtype)
        shape = (1, vae.config.z_dim, 1, 1, 1)
        mean = torch.tensor(vae.config.latents_mean).view(shape).to(latents.device, latents.dtype)
        std = torch.tensor(vae.config.latents_std).view(shape).to(latents.device, latents.dtype)
        image = vae.decode(latents * std + mean, return_dict=False)[0][:, :, 0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_qwenimage(size, seed)


def qwen_text_encoder(size: TinySize, seed: int, tok: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
    """A 2-layer Qwen2.5-VL (hidden size ``t5_dim`` = the transformer's ``joint_attention_dim``) with a 1-block
    vision tower it never uses for text-to-image; multimodal token ids are the tokenizer's own."""
    heads = 4
    half = size.t5_dim // heads // 2  # rotary pairs per head, split over (t, h, w) like Qwen2.5-VL's (16, 24, 24)
    mrope = (half - 2 * (3 * half // 8), 3 * half // 8, 3 * half // 8)
    ids = tok.convert_tokens_to_ids
    config = Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=len(tok),
            hidden_size=size.t5_dim,
            intermediate_size=2 * size.t5_dim,
            num_hidden_layers=2,
            num_attention_heads=heads,
            num_key_value_heads=2,
            max_position_embeddings=2048,
            rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": list(mrope)},
            bos_token_id=ids("<|endoftext|>"),
            eos_token_id=ids("<|im_end|>"),
            pad_token_id=ids("<|endoftext|>"),
        ),
        vision_config=dict(
            depth=1,
            hidden_size=16,
            intermediate_size=32,
            num_heads=2,
            patch_size=14,
            out_hidden_size=size.t5_dim,
            fullatt_block_indexes=[0],
        ),
        image_token_id=ids("<|image_pad|>"),
        video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"),
        vision_end_token_id=ids("<|vision_end|>"),
    )
    return seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))


def build_tiny_qwenimage(size: TinySize = TinySize(), seed: int = 0) -> QwenImagePipeline:
    """A Qwen-Image-like pipeline: ``double_blocks`` MMDiT blocks, a Qwen2.5-VL text encoder, the Qwen-Image VAE
    (``len(vae_channels)`` levels, real latent mean/std cycled to ``latent_channels``) and Qwen-Image's
    dynamically shifted flow-matching scheduler. True CFG needs ``negative_prompt`` and ``true_cfg_scale > 1``."""
    tok = qwen_tokenizer()
    hw_rope = (size.head_dim * 7 // 16) // 2 * 2  # Qwen-Image: (16, 56, 56) for head_dim 128
    transformer = seeded(
        seed + 1,
        lambda: QwenImageTransformer2DModel(
            patch_size=2,
            in_channels=4 * size.latent_channels,
            out_channels=size.latent_channels,
            num_layers=size.double_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=size.t5_dim,
            axes_dims_rope=(size.head_dim - 2 * hw_rope, hw_rope, hw_rope),
        ),
    )
    defaults = inspect.signature(AutoencoderKLQwenImage.__init__).parameters
    mean, std = defaults["latents_mean"].default, defaults["latents_std"].default
    base = size.vae_channels[0]
    vae = seeded(
        seed + 2,
        lambda: AutoencoderKLQwenImage(
            base_dim=base,
            z_dim=size.latent_channels,
            dim_mult=[c // base for c in size.vae_channels],
            num_res_blocks=1,
            temperal_downsample=[False] * (len(size.vae_channels) - 1),
            latents_mean=[mean[i % len(mean)] for i in range(size.latent_channels)],
            latents_std=[std[i % len(std)] for i in range(size.latent_channels)],
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # Qwen/Qwen-Image scheduler_config.json
        num_train_timesteps=1000,
        shift=1.0,
        use_dynamic_shifting=True,
        base_shift=0.5,
        max_shift=0.9,
        base_image_seq_len=256,
        max_image_seq_len=8192,
        shift_terminal=0.02,
        time_shift_type="exponential",
    )
    return QwenImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=qwen_text_encoder(size, seed + 3, tok),
        tokenizer=tok,
        transformer=transformer,
    )
