"""Qwen-Image (``QwenImagePipeline``): MMDiT blocks returning ``(text, image)``; text tokens first in the joint
sequence; packed 2x2 latents; true CFG with a negative prompt, the combined prediction rescaled per token to
the norm of the conditional one; the Qwen2.5-VL prompt template (its first 34 tokens dropped)."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import QwenImagePipeline
from diffusers.models.transformers.transformer_qwenimage import compute_text_seq_len_from_mask

from .base import Adapter, AttentionLayout, BlockList, Conditioning, LatentLayout, Streams, TextRoles, flow_timesteps, generator


class QwenImageAdapter(Adapter):
    name = "qwenimage"
    pipeline_classes = (QwenImagePipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks"),)
    default_max_sequence_length = 512
    max_sequence_length_limit = 1024

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

    def guided(self, v, c):
        """QwenImagePipeline's true CFG: the guided prediction rescaled per token to the norm of ``c``."""
        return v * (torch.norm(c, dim=-1, keepdim=True) / torch.norm(v, dim=-1, keepdim=True))

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
