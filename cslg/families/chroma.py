"""Chroma (``ChromaPipeline``): FLUX.1-like double-stream blocks returning ``(text, image)`` and single-stream blocks
taking and returning one ``[text, image]`` sequence (``JOINT``); text tokens first; packed 2x2 latents (FLUX.1's
VAE); T5 only, its padding masked out of the attention except the first padding token; no guidance embedding: true
CFG with a negative prompt. Modulation comes from the transformer's own approximator (``distilled_guidance_layer``),
one slice of its output per block, so each block is called with its own ``temb``."""

from __future__ import annotations

from typing import Sequence

import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, FlowMatchEulerDiscreteScheduler

from .base import JOINT, BlockList
from .flux import FluxAdapter
from .layout import Conditioning, Streams, TextRoles
from .tiny import TinySize, kl_vae, seeded, t5_encoder, t5_tokenizer


class ChromaAdapter(FluxAdapter):
    """FLUX.1's noise, timesteps, token layout, attention sites and un-embedding; its own modulation, text and CFG."""

    name = "chroma"
    pipeline_classes = (ChromaPipeline,)
    block_lists = (
        BlockList("transformer_blocks", "", "double-stream blocks"),
        BlockList("single_transformer_blocks", "s", "single-stream blocks", JOINT),
    )
    tiny_presets = ("tiny-chroma",)
    has_distilled_guidance = False
    default_guidance = None
    default_cfg_scale = 5.0  # ChromaPipeline's guidance_scale
    default_max_sequence_length = 512
    released = {  # lodestones/Chroma1-HD transformer/config.json
        "transformer": dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                            num_attention_heads=24, joint_attention_dim=4096, axes_dims_rope=(16, 56, 56),
                            approximator_num_channels=64, approximator_hidden_dim=5120, approximator_layers=5),
        "height": 1024, "width": 1024, "steps": 35,
    }

    def __init__(self, pipe, guidance=None, frames=None):
        super().__init__(pipe, guidance, frames)
        # each block's modulation is its own slice of the approximator's output: blocks by their index in their list
        self._index = {id(block): int(name.lstrip("s")) for name, block, _ in self.blocks}

    def call_block(self, block, convention, streams, lane, shared):
        """The block with its slice of the modulation: ``3 i`` for single block ``i``; ``3 n_single + 6 i`` (image)
        and ``3 n_single + 6 n_double + 6 i`` (text) for double block ``i``, as the transformer's forward takes them."""
        i = self._index[id(getattr(block, "__self__", block))]  # a bound ``_call_impl`` stands for its module
        mods, tr = lane["pooled_temb"], self.transformer
        if convention.output == JOINT:
            temb = mods[:, 3 * i : 3 * i + 3]
        else:
            image = 3 * len(tr.single_transformer_blocks) + 6 * i
            text = 3 * len(tr.single_transformer_blocks) + 6 * len(tr.transformer_blocks) + 6 * i
            temb = torch.cat((mods[:, image : image + 6], mods[:, text : text + 6]), dim=1)
        lane = {"temb": temb, "attention_mask": lane["attention_mask"]}
        return super().call_block(block, convention, streams, lane, shared)

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, text_ids, mask, *_ = self.pipe.encode_prompt(
            prompt=list(prompts), do_classifier_free_guidance=False, device=self.device,
            max_sequence_length=max_sequence_length,
        )
        return Conditioning(embeds, None, mask, shared={"text_ids": text_ids})

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch = latents.shape[0]
        hidden = tr.x_embedder(latents)
        timestep = (t.expand(batch).to(latents.dtype) / 1000).to(hidden.dtype) * 1000  # as the pipeline passes it
        pooled_temb = tr.distilled_guidance_layer(tr.time_text_embed(timestep))
        text = tr.context_embedder(cond.embeds)
        rope = tr.pos_embed(torch.cat((cond.shared["text_ids"], extras["img_ids"]), dim=0))
        # ChromaPipeline._prepare_attention_mask: the text mask, then every image token
        ones = torch.ones(batch, latents.shape[1], device=cond.mask.device, dtype=torch.bool)
        mask = torch.cat([cond.mask, ones], dim=1)
        lane = {"pooled_temb": pooled_temb, "attention_mask": mask}
        shared = {"image_rotary_emb": rope, "joint_attention_kwargs": attention_kwargs}
        return Streams(hidden, text), lane, shared, {"temb": pooled_temb[:, -2:]}

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """T5, ``content </s> <pad>...``, every padding token but the first masked out: background = ``</s>`` and
        the first padding token (the visible non-content tokens); content = the tokens before ``</s>``."""
        n = min(len(self.pipe.tokenizer(prompt, max_length=text_len, truncation=True).input_ids), text_len)
        return TextRoles(tuple(range(n - 1)), tuple(range(n - 1, min(n + 1, text_len))), text_len)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_chroma(size, seed)


def build_tiny_chroma(size: TinySize = TinySize(), seed: int = 0) -> ChromaPipeline:
    """A Chroma1-HD-like pipeline: FLUX-like blocks with pruned (approximator-fed) modulation, T5, FLUX.1's VAE
    scaling and Chroma's dynamically shifted flow-matching scheduler."""
    tok = t5_tokenizer()
    rope = size.head_dim // 4
    transformer = seeded(
        seed + 1,
        lambda: ChromaTransformer2DModel(
            patch_size=1,
            in_channels=4 * size.latent_channels,
            num_layers=size.double_blocks,
            num_single_layers=size.single_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=size.t5_dim,
            axes_dims_rope=(size.head_dim - 2 * rope, rope, rope),
            approximator_num_channels=32,
            approximator_hidden_dim=2 * size.heads * size.head_dim,
            approximator_layers=2,
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # lodestones/Chroma1-HD scheduler_config.json
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15,
        base_image_seq_len=256, max_image_seq_len=4096,
    )
    return ChromaPipeline(
        scheduler=scheduler,
        vae=kl_vae(size, seed + 2, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=t5_encoder(size, seed + 4, vocab_size=len(tok)),
        tokenizer=tok,
        transformer=transformer,
    )
