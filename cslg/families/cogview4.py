"""CogView4 (``CogView4Pipeline``): blocks called positionally that return ``(image, text)`` (``IMAGE_TEXT``); text
tokens first in the joint attention; spatial latents, 2x2 patches, each token's channels patch-minor; SDXL-style
size conditioning; GLM text encoder (its second-to-last hidden states), prompts left-padded to a multiple of 16
tokens, so a prompt and its negative prompt may differ in length; true CFG.

Rows of one batch must share a text length: shorter prompts are left-padded with zero embeddings that every attention
call of the blocks masks out of its keys, so each row computes what the pipeline computes for it alone."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import CogView4Pipeline, CogView4Transformer2DModel, FlowMatchEulerDiscreteScheduler
from diffusers.pipelines.cogview4.pipeline_cogview4 import calculate_shift, retrieve_timesteps
from tokenizers import processors
from transformers import GlmConfig, GlmModel, PreTrainedTokenizerFast

from ..guidance.attention import SDPARoute
from .base import IMAGE_TEXT, BlockList, SpatialAdapter, generator
from .layout import AttentionLayout, Conditioning, Streams, TextRoles
from .tiny import TinySize, byte_bpe_backend, kl_vae, seeded

GLM_SPECIALS = ("<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>")
GLM_PREFIX = 2  # the tokenizer starts every text with [gMASK] <sop>
PAD_MULTIPLE = 16  # CogView4Pipeline._get_glm_embeds left-pads the token ids to a multiple of 16


class CogView4Adapter(SpatialAdapter):
    name = "cogview4"
    pipeline_classes = (CogView4Pipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks", IMAGE_TEXT),)
    tiny_presets = ("tiny-cogview4",)
    default_cfg_scale = 5.0  # CogView4Pipeline's guidance_scale
    default_max_sequence_length = 1024
    max_sequence_length_limit = 1024
    released = {  # THUDM/CogView4-6B transformer/config.json
        "transformer": dict(patch_size=2, in_channels=16, out_channels=16, num_layers=28, attention_head_dim=128,
                            num_attention_heads=32, text_embed_dim=4096, time_embed_dim=512, condition_dim=256,
                            pos_embed_max_size=128, sample_size=128, rope_axes_dim=(256, 256)),
        "height": 1024, "width": 1024, "steps": 50,
    }

    def call_block(self, block, convention, streams, lane, shared):
        keep = lane.get("text_keep")
        lane = {"temb": lane["temb"]}
        if keep is None:
            return super().call_block(block, convention, streams, lane, shared)
        # padded text keys masked out of every attention call of the block: [b, 1, 1, text + image] additive
        image = torch.ones(keep.shape[0], streams.image.shape[1], dtype=torch.bool, device=keep.device)
        keys = torch.cat([keep, image], dim=1)
        mask = torch.zeros(keys.shape, dtype=streams.image.dtype, device=keys.device).masked_fill(~keys, float("-inf"))
        with SDPARoute(_masked_keys(mask[:, None, None])):
            return super().call_block(block, convention, streams, lane, shared)

    def attention_output(self, block, convention):
        return block.attn1.to_out[0], lambda output, n_image: output[:, -n_image:]  # [text, image] before the split

    def attention_calls(self, block, convention):
        return [(block.attn1, AttentionLayout("joint", text_first=True))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        """Each prompt as the pipeline encodes it alone, left-padded with zeros to the longest (``mask``: the real
        tokens; ``None`` when every prompt has the same length)."""
        rows = [self.pipe.encode_prompt(p, do_classifier_free_guidance=False, device=self.device,
                                        max_sequence_length=max_sequence_length)[0] for p in prompts]
        length = max(r.shape[1] for r in rows)
        if all(r.shape[1] == length for r in rows):
            return Conditioning(torch.cat(rows))
        embeds = torch.cat([F.pad(r, (0, 0, length - r.shape[1], 0)) for r in rows])
        mask = torch.stack([torch.arange(length, device=embeds.device) >= length - r.shape[1] for r in rows])
        return Conditioning(embeds, None, mask)

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(  # float32 whatever the model's dtype, as the pipeline draws them
            1, self.transformer.config.in_channels, height, width, torch.float32, self.device, generator(seed)
        )
        return latents, {"size": (height, width)}

    def timesteps(self, steps, latents):
        """CogView4Pipeline's: integer timesteps ``linspace(1000, 1)``, sigmas ``t / 1000``, the resolution shift."""
        scheduler, p = self.pipe.scheduler, self.transformer.config.patch_size
        n = scheduler.config.num_train_timesteps
        timesteps = np.linspace(n, 1.0, steps).astype(np.int64).astype(np.float32)
        mu = calculate_shift((latents.shape[-2] // p) * (latents.shape[-1] // p),
                             scheduler.config.get("base_image_seq_len", 256), scheduler.config.get("base_shift", 0.25),
                             scheduler.config.get("max_shift", 0.75))
        return retrieve_timesteps(scheduler, steps, self.device, timesteps, timesteps / n, mu=mu)[0]

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch, dtype = latents.shape[0], cond.embeds.dtype
        latents = latents.to(self.dtype)
        size = torch.tensor([extras["size"]], dtype=dtype, device=latents.device).repeat(batch, 1)
        crop = torch.zeros_like(size)
        rope = tr.rope(latents)
        hidden, text = tr.patch_embed(latents, cond.embeds)
        temb = F.silu(tr.time_condition_embed(t.expand(batch), size, size, crop, hidden.dtype))
        lane = {"temb": temb} if cond.mask is None else {"temb": temb, "text_keep": cond.mask}
        shared = {"image_rotary_emb": rope, "attention_mask": None, "attention_kwargs": attention_kwargs}
        return Streams(hidden, text), lane, shared, {"temb": temb}

    def unembed(self, image, post, latents, extras):
        """The output projection un-patchified as the transformer does it (each token's channels patch-minor)."""
        tr, p = self.transformer, self.transformer.config.patch_size
        out = tr.proj_out(tr.norm_out(image, post["temb"]))
        h, w = latents.shape[-2] // p, latents.shape[-1] // p
        return out.reshape(out.shape[0], h, w, -1, p, p).permute(0, 3, 1, 4, 2, 5).flatten(4, 5).flatten(2, 3)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """``<pad>... [gMASK] <sop> content``, right-aligned in the row: background = ``[gMASK] <sop>`` (the start
        tokens), content = the prompt's tokens; the padding in front attends (the pipeline's) or is masked (ours)."""
        n = min(len(self.pipe.tokenizer(prompt, add_special_tokens=True).input_ids), text_len)
        start = text_len - n
        return TextRoles(tuple(range(start + GLM_PREFIX, text_len)), tuple(range(start, start + GLM_PREFIX)), text_len)

    def decode(self, latents, height, width, output_type="pil"):
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_cogview4(size, seed)


def _masked_keys(mask: torch.Tensor):
    """An SDPA handler adding ``mask`` (additive, broadcast over heads and queries) to every call's mask."""
    def handler(sdpa, query, key, value, attn_mask=None, **kwargs):
        extra = mask.to(query.dtype)
        if attn_mask is not None and attn_mask.dtype == torch.bool:
            attn_mask = torch.zeros_like(attn_mask, dtype=query.dtype).masked_fill(~attn_mask, float("-inf"))
        return sdpa(query, key, value, attn_mask=extra if attn_mask is None else attn_mask + extra, **kwargs)
    return handler


def glm_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with GLM-4's special tokens, ``[gMASK] <sop>`` before every text and left padding
    with ``<|endoftext|>`` (as THUDM/CogView4-6B's tokenizer)."""
    backend = byte_bpe_backend([], GLM_SPECIALS)
    backend.post_processor = processors.TemplateProcessing(
        single="[gMASK] <sop> $A", special_tokens=[(t, backend.token_to_id(t)) for t in ("[gMASK]", "<sop>")])
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<|endoftext|>", eos_token="<|endoftext|>",
                                  additional_special_tokens=list(GLM_SPECIALS[1:]), padding_side="left")
    tok.model_max_length = 128000
    return tok


def build_tiny_cogview4(size: TinySize = TinySize(), seed: int = 0) -> CogView4Pipeline:
    """A CogView4-6B-like pipeline: ``double_blocks`` blocks, a 2-layer GLM text encoder of hidden size ``t5_dim``,
    an SDXL-style KL VAE (scaling factor 1) and CogView4's flow-matching scheduler with its linear resolution shift."""
    tok = glm_tokenizer()
    config = GlmConfig(vocab_size=len(tok), hidden_size=size.t5_dim, intermediate_size=2 * size.t5_dim,
                       num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=size.t5_dim // 4,
                       max_position_embeddings=2048, pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id)
    transformer = seeded(
        seed + 1,
        lambda: CogView4Transformer2DModel(
            patch_size=2,
            in_channels=size.latent_channels,
            out_channels=size.latent_channels,
            num_layers=size.double_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            text_embed_dim=size.t5_dim,
            time_embed_dim=2 * size.text_dim,
            condition_dim=size.text_dim // 2,
            pos_embed_max_size=size.sample_size,
            sample_size=size.sample_size,
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(  # THUDM/CogView4-6B scheduler_config.json
        num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=True, base_shift=0.25, max_shift=0.75,
        base_image_seq_len=256, max_image_seq_len=4096, time_shift_type="linear",
    )
    return CogView4Pipeline(
        tokenizer=tok,
        text_encoder=seeded(seed + 3, lambda: GlmModel(config)),
        vae=kl_vae(size, seed + 2, scaling_factor=1.0, shift_factor=None),
        transformer=transformer,
        scheduler=scheduler,
    )
