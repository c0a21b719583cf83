"""FLUX.2 (``Flux2Pipeline``, dev) and FLUX.2 [klein] (``Flux2KleinPipeline``): one transformer,
``Flux2Transformer2DModel``. Double-stream blocks return ``(text, image)``; single-stream blocks take and return one
``[text, image]`` sequence (``JOINT``: diffusers' forward concatenates the streams once before them); text tokens
first in the joint sequence; 2x2-patchified, packed latents normalised by the VAE's batch norm; modulation shared
by all blocks of a list (computed once from the timestep). Dev has a distilled guidance embedding and no true CFG;
Klein has no guidance embedding and runs true CFG (with an empty negative prompt in its pipeline) unless the
checkpoint is step-distilled. Text: the hidden states of three layers of a Mistral3 (dev) or Qwen3 (Klein)
language model, stacked along the channels."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from diffusers import (
    AutoencoderKLFlux2,
    FlowMatchEulerDiscreteScheduler,
    Flux2KleinPipeline,
    Flux2Pipeline,
    Flux2Transformer2DModel,
)
from diffusers.pipelines.flux2.pipeline_flux2 import compute_empirical_mu, format_input, retrieve_timesteps
from diffusers.pipelines.flux2.system_messages import SYSTEM_MESSAGE
from transformers import (
    Mistral3Config,
    Mistral3ForConditionalGeneration,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from .base import JOINT, BlockList, generator
from .flux import FluxAdapter
from .layout import Conditioning, Streams, TextRoles
from .tiny import TinySize, byte_bpe_backend, qwen_tokenizer, seeded

# Mistral's chat special tokens; the template renders the system and user messages as Mistral-Small-3's does
MISTRAL_SPECIALS = (
    "<unk>", "<s>", "</s>", "<pad>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[IMG]",
)
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}{% set text = m['content'] if m['content'] is string else "
    "m['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join('') %}"
    "{% if m['role'] == 'system' %}[SYSTEM_PROMPT]{{ text }}[/SYSTEM_PROMPT]{% elif m['role'] == 'user' %}"
    "[INST]{{ text }}[/INST]{% else %}{{ text }}{{ eos_token }}{% endif %}{% endfor %}"
)
# Qwen3's chat template for a user turn and the generation prompt (``enable_thinking=False``: an empty think block)
QWEN3_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking is defined and not enable_thinking %}"
    "<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
DOUBLE_KW = ("temb_mod_img", "temb_mod_txt")
QK_NORM_GAIN = 4.0  # the tiny presets' qk-norm weights


class Flux2Adapter(FluxAdapter):
    """FLUX.1's attention sites (single blocks: the parallel attention + MLP output of ``[text, image]``, before the
    gate), token layout (ids ``(t, row, col, l)``) and un-embedding; its own modulation, text, noise and timesteps."""

    name = "flux2"
    pipeline_classes = (Flux2Pipeline,)
    block_lists = (
        BlockList("transformer_blocks", "", "double-stream blocks"),
        BlockList("single_transformer_blocks", "s", "single-stream blocks", JOINT),
    )
    tiny_presets = ("tiny-flux2",)
    default_guidance = 4.0  # Flux2Pipeline's guidance_scale
    default_max_sequence_length = 512
    released = {  # black-forest-labs/FLUX.2-dev transformer/config.json
        "transformer": dict(patch_size=1, in_channels=128, num_layers=8, num_single_layers=48, attention_head_dim=128,
                            num_attention_heads=48, joint_attention_dim=15360, timestep_guidance_channels=256,
                            mlp_ratio=3.0, axes_dims_rope=(32, 32, 32, 32), rope_theta=2000, eps=1e-6,
                            guidance_embeds=True),
        "height": 1024, "width": 1024, "steps": 50,
    }

    def call_block(self, block, convention, streams, lane, shared):
        # the double blocks take the image and text modulations, the single blocks their own (and no text stream)
        if convention.output == JOINT:
            lane = {"temb_mod": lane["temb_mod"], "encoder_hidden_states": None}
        else:
            lane = {k: lane[k] for k in DOUBLE_KW}
        return super().call_block(block, convention, streams, lane, shared)

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, text_ids = self.pipe.encode_prompt(prompt=list(prompts), device=self.device,
                                                   max_sequence_length=max_sequence_length)
        return Conditioning(embeds, shared={"text_ids": text_ids[0]})  # the same positions for every row

    def initial_noise(self, seed, height, width):
        latents, ids = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels // 4, height, width, self.dtype, self.device, generator(seed)
        )
        return latents, {"img_ids": ids[0]}

    def timesteps(self, steps, latents):
        """Flux2Pipeline's: sigmas ``linspace(1, 1/steps)`` shifted by the empirical ``mu`` of BFL's sampler."""
        scheduler = self.pipe.scheduler
        sigmas = None if scheduler.config.get("use_flow_sigmas", False) else np.linspace(1.0, 1 / steps, steps)
        mu = compute_empirical_mu(image_seq_len=latents.shape[1], num_steps=steps)
        timesteps = retrieve_timesteps(scheduler, steps, self.device, sigmas=sigmas, mu=mu)[0]
        scheduler.set_begin_index(0)
        return timesteps

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch = latents.shape[0]
        timestep = (t.expand(batch).to(latents.dtype) / 1000).to(latents.dtype) * 1000  # as the pipeline passes it
        guidance = None
        if tr.config.guidance_embeds:
            guidance = torch.full([batch], self.guidance, device=latents.device, dtype=torch.float32)
            guidance = guidance.to(latents.dtype) * 1000
        temb = tr.time_guidance_embed(timestep, guidance)
        lane = {"temb_mod_img": tr.double_stream_modulation_img(temb),
                "temb_mod_txt": tr.double_stream_modulation_txt(temb),
                "temb_mod": tr.single_stream_modulation(temb)}
        hidden = tr.x_embedder(latents)
        text = tr.context_embedder(cond.embeds)
        image_rope, text_rope = tr.pos_embed(extras["img_ids"]), tr.pos_embed(cond.shared["text_ids"])
        rope = tuple(torch.cat([a, b], dim=0) for a, b in zip(text_rope, image_rope))
        shared = {"image_rotary_emb": rope, "joint_attention_kwargs": attention_kwargs}
        return Streams(hidden, text), lane, shared, {"temb": temb}

    def chat_text(self, prompt: str) -> str:
        """The text the pipeline's tokenizer reads for ``prompt`` (its chat template around it)."""
        tok = self.pipe.tokenizer
        return tok.apply_chat_template(format_input([prompt], self.pipe.system_message)[0],
                                       add_generation_prompt=False, tokenize=False)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """``<template prefix> content <template suffix> <pad>...`` (padding attended, as the pipeline leaves it):
        content = the prompt's tokens, background = the padding, or the suffix when the prompt fills the sequence."""
        return template_roles(getattr(self.pipe.tokenizer, "tokenizer", self.pipe.tokenizer), self.chat_text(prompt),
                              prompt, text_len)

    def unpack(self, latents, height, width):
        """Packed tokens ``[B, h*w, 4C]`` (row-major, as ``_prepare_latent_ids`` numbers them) as the VAE's
        patchified latents ``[B, 4C, h, w]``."""
        side = self.pipe.vae_scale_factor * 2
        return latents.unflatten(1, (height // side, width // side)).permute(0, 3, 1, 2)

    def decode(self, latents, height, width, output_type="pil"):
        """Flux2Pipeline's decode: undo the VAE's batch-norm normalisation, un-patchify, decode."""
        pipe, vae = self.pipe, self.pipe.vae
        latents = self.unpack(latents, height, width)
        mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
        std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps)
        std = std.to(latents.device, latents.dtype)
        latents = pipe._unpatchify_latents(latents * std + mean)
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return pipe.image_processor.postprocess(image, output_type=output_type)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_flux2(size, seed)


def template_roles(tokenizer, text: str, prompt: str, text_len: int) -> TextRoles:
    """Token roles of ``prompt`` inside ``text`` (its chat template rendered around it), tokenized as one string
    and padded on the right to ``text_len``: content = the prompt's tokens, background = the padding (or the
    template's closing tokens when nothing is padded)."""
    start = text.rindex(prompt) if prompt else len(text)
    n_prefix = len(tokenizer(text[:start], add_special_tokens=False).input_ids)
    n_all = min(len(tokenizer(text, add_special_tokens=False).input_ids), text_len)
    n_prompt = len(tokenizer(prompt, add_special_tokens=False).input_ids) if prompt else 0
    content = tuple(range(min(n_prefix, text_len), min(n_prefix + n_prompt, text_len)))
    end = content[-1] + 1 if content else min(n_prefix, text_len)
    background = tuple(range(n_all, text_len)) or tuple(range(end, text_len)) or (text_len - 1,)
    return TextRoles(content, background, text_len)


def mistral_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with Mistral's chat special tokens and chat template, and merges that make each
    word of FLUX.2's system message one token (so the message is ~30 of the text tokens)."""
    tok = PreTrainedTokenizerFast(tokenizer_object=byte_bpe_backend([SYSTEM_MESSAGE], MISTRAL_SPECIALS), bos_token="<s>",
                                  eos_token="</s>", unk_token="<unk>",
                                  pad_token="<pad>", additional_special_tokens=list(MISTRAL_SPECIALS[4:]),
                                  chat_template=MISTRAL_CHAT_TEMPLATE)
    tok.model_max_length = 131072
    return tok


def mistral3_text_encoder(size: TinySize, seed: int, tok: PreTrainedTokenizerFast) -> Mistral3ForConditionalGeneration:
    """A Mistral3 with a 30-layer tiny language model (the pipeline stacks the hidden states of layers 10, 20, 30)
    of hidden size ``t5_dim // 3``, and a 1-layer Pixtral vision tower it never uses for text-to-image."""
    ids = tok.convert_tokens_to_ids
    hidden = size.t5_dim // 3
    config = Mistral3Config(
        text_config=dict(model_type="mistral", vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=30, num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                         max_position_embeddings=2048, bos_token_id=ids("<s>"), eos_token_id=ids("</s>"),
                         pad_token_id=ids("<pad>")),
        vision_config=dict(model_type="pixtral", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, head_dim=8, image_size=32, patch_size=16),
        image_token_index=ids("[IMG]"),
        spatial_merge_size=1,
    )
    return seeded(seed, lambda: Mistral3ForConditionalGeneration(config))


def qwen3_text_encoder(size: TinySize, seed: int, tok) -> Qwen3ForCausalLM:
    """A 27-layer tiny Qwen3 (Klein stacks the hidden states of layers 9, 18, 27) of hidden size ``t5_dim // 3``."""
    ids = tok.convert_tokens_to_ids
    hidden = size.t5_dim // 3
    config = Qwen3Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=27,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=hidden // 2,
                         max_position_embeddings=2048, bos_token_id=ids("<|endoftext|>"),
                         eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    return seeded(seed, lambda: Qwen3ForCausalLM(config))


def flux2_vae(size: TinySize, seed: int) -> AutoencoderKLFlux2:
    """The FLUX.2 VAE (``len(vae_channels)`` levels) with non-trivial batch-norm statistics of the patchified
    latents, so decoding exercises the de-normalisation."""
    n = len(size.vae_channels)

    def build():
        vae = AutoencoderKLFlux2(
            down_block_types=("DownEncoderBlock2D",) * n, up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=size.vae_channels, layers_per_block=1, latent_channels=size.latent_channels,
            norm_num_groups=min(size.vae_channels), sample_size=32,
        )
        vae.bn.running_mean.copy_(0.1 * torch.randn_like(vae.bn.running_mean))
        vae.bn.running_var.copy_(0.5 + torch.rand_like(vae.bn.running_var))
        return vae

    return seeded(seed, build)


def build_tiny_flux2(size: TinySize = TinySize(), seed: int = 0, klein: bool = False):
    """A FLUX.2-dev-like pipeline (guidance embedding, Mistral3 text encoder), or with ``klein`` a FLUX.2
    [klein]-base-like one (no guidance embedding, Qwen3 text encoder, ``is_distilled=False``: true CFG)."""
    tok = qwen_tokenizer() if klein else mistral_tokenizer()
    if klein:
        tok.chat_template = QWEN3_CHAT_TEMPLATE
    rope = size.head_dim // 4

    def build_transformer():
        tr = Flux2Transformer2DModel(
            patch_size=1,
            in_channels=4 * size.latent_channels,
            num_layers=size.double_blocks,
            num_single_layers=size.single_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=3 * (size.t5_dim // 3),
            timestep_guidance_channels=32,
            axes_dims_rope=(rope,) * 4,
            guidance_embeds=not klein,
        )
        # Text reaches the image tokens only through attention (no pooled embedding), and qk-normed random logits
        # attend almost uniformly to the mostly-template text: sharper attention lets the prompt matter.
        for name, module in tr.named_modules():
            if name.endswith(("norm_q", "norm_k", "norm_added_q", "norm_added_k")):
                module.weight.data.fill_(QK_NORM_GAIN)
        return tr

    transformer = seeded(seed + 1, build_transformer)
    scheduler = FlowMatchEulerDiscreteScheduler(  # FLUX.2-dev scheduler_config.json
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="exponential",
    )
    vae = flux2_vae(size, seed + 2)
    if klein:
        return Flux2KleinPipeline(scheduler=scheduler, vae=vae, text_encoder=qwen3_text_encoder(size, seed + 3, tok),
                                  tokenizer=tok, transformer=transformer, is_distilled=False)
    return Flux2Pipeline(scheduler=scheduler, vae=vae, text_encoder=mistral3_text_encoder(size, seed + 3, tok),
                         tokenizer=tok, transformer=transformer)

