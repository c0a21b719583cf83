"""SANA (``SanaPipeline``): linear-attention DiT blocks returning one tensor (the image tokens): ReLU linear
self-attention (``attn1``, no SDPA), softmax cross-attention to the Gemma-2 prompt (``attn2``), a GLU conv
feed-forward on the token grid; spatial latents of the DC-AE (32x compression), 1x1 patches, no positional
embedding; CFG batched; flow-matching DPM-Solver.

The prompt is encoded without ``complex_human_instruction``: ``SanaPipeline`` prefixes it to the prompt and not to
the negative prompt, and an adapter encodes every conditioning alike, so the adapter equals the pipeline called with
``complex_human_instruction=None``."""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from diffusers import AutoencoderDC, DPMSolverMultistepScheduler, SanaPipeline, SanaTransformer2DModel
from diffusers.pipelines.flux.pipeline_flux import retrieve_timesteps
from transformers import Gemma2Config, Gemma2Model, GemmaTokenizer

from .base import IMAGE_ONLY, BlockList, SpatialAdapter, generator
from .layout import AttentionLayout, Conditioning, Streams, TextRoles
from .tiny import TinySize, seeded

EPS = 1e-15  # SanaLinearAttnProcessor2_0's


class ReluLinearAttention:
    """SANA's self-attention as diffusers' ``SanaLinearAttnProcessor2_0`` computes it,
    ``o_i = Σ_j (φ(q_i)·φ(k_j)) v_j / (Σ_j φ(q_i)·φ(k_j) + ε)`` with ``φ = ReLU`` (an ``AttentionKernel``).

    Identity attention gives each query its own value, ``o_i = v_i`` (``PAGIdentitySanaLinearAttnProcessor2_0``'s
    perturbed path: ``to_out(to_v(x))``); the probabilities are the normalised kernel weights."""

    @staticmethod
    def _input(args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        return args[0] if args else kwargs["hidden_states"]

    def identity(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> torch.Tensor:
        x = self._input(args, kwargs)
        out = module.to_out[1](module.to_out[0](module.to_v(x).to(x.dtype)))
        return out.clip(-65504, 65504) if x.dtype == torch.float16 else out

    def queries_keys(self, module: nn.Module, args: tuple, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        x = self._input(args, kwargs)
        q, k = module.to_q(x), module.to_k(x)
        if module.norm_q is not None:
            q = module.norm_q(q)
        if module.norm_k is not None:
            k = module.norm_k(k)
        heads = lambda y: F.relu(y.unflatten(-1, (module.heads, -1)).transpose(1, 2))  # noqa: E731  [b, H, n, d]
        return heads(q), heads(k)

    def head_probs(self, q, k, scale=None, mask=None):
        weights = torch.matmul(q.float(), k.float().transpose(-1, -2))
        return weights / (weights.sum(-1, keepdim=True) + EPS)


RELU_LINEAR = ReluLinearAttention()


class SanaAdapter(SpatialAdapter):
    name = "sana"
    pipeline_classes = (SanaPipeline,)
    block_lists = (BlockList("transformer_blocks", "", "blocks", IMAGE_ONLY),)
    tiny_presets = ("tiny-sana",)
    default_cfg_scale = 4.5  # SanaPipeline's guidance_scale
    default_max_sequence_length = 300
    pag_default_layers = ("0",)  # SanaPAGPipeline's default "transformer_blocks.0"
    # Efficient-Large-Model/Sana_1600M_1024px_diffusers: transformer/config.json, 20 steps at 1024 px
    released = {
        "transformer": dict(
            in_channels=32, out_channels=32, num_attention_heads=70, attention_head_dim=32, num_layers=20,
            num_cross_attention_heads=20, cross_attention_head_dim=112, cross_attention_dim=2240,
            caption_channels=2304, mlp_ratio=2.5, attention_bias=False, sample_size=32, patch_size=1,
            norm_elementwise_affine=False, norm_eps=1e-6, interpolation_scale=None,
        ),
        "height": 1024, "width": 1024, "steps": 20,
    }

    def attention_output(self, block, convention):
        return block.attn1.to_out[0], lambda output, n_image: output  # the linear self-attention's output

    def attention_calls(self, block, convention):
        return [(block.attn1, AttentionLayout("self", kernel=RELU_LINEAR)), (block.attn2, AttentionLayout("cross"))]

    def encode(self, prompts: Sequence[str], max_sequence_length: int) -> Conditioning:
        embeds, mask, _, _ = self.pipe.encode_prompt(
            list(prompts), do_classifier_free_guidance=False, device=self.device, clean_caption=False,
            max_sequence_length=max_sequence_length, complex_human_instruction=None,
        )
        return Conditioning(embeds, None, mask)

    def initial_noise(self, seed, height, width):
        latents = self.pipe.prepare_latents(  # drawn in float32, as SanaPipeline does
            1, self.transformer.config.in_channels, height, width, torch.float32, self.device, generator(seed)
        )
        return latents, {}

    def timesteps(self, steps, latents):
        return retrieve_timesteps(self.pipe.scheduler, steps, self.device)[0]

    def embed(self, latents, t, cond, extras, attention_kwargs):
        tr = self.transformer
        batch, p = latents.shape[0], tr.config.patch_size
        hidden = tr.patch_embed(latents.to(self.dtype))
        timestep = t.expand(batch) * tr.config.timestep_scale
        timestep, embedded = tr.time_embed(timestep, batch_size=batch, hidden_dtype=hidden.dtype)
        text = tr.caption_projection(cond.embeds.to(self.dtype)).view(batch, -1, hidden.shape[-1])
        text = tr.caption_norm(text)
        mask = ((1 - cond.mask.to(hidden.dtype)) * -10000.0).unsqueeze(1)  # as the transformer turns it into a bias
        lane = {"encoder_hidden_states": text, "encoder_attention_mask": mask, "timestep": timestep}
        shared = {"attention_mask": None, "height": latents.shape[-2] // p, "width": latents.shape[-1] // p}
        return Streams(hidden), lane, shared, {"embedded_timestep": embedded}

    def unembed(self, image, post, latents, extras):
        tr = self.transformer
        hidden = tr.proj_out(tr.norm_out(image, post["embedded_timestep"], tr.scale_shift_table))
        out = self.unpatchify(hidden, latents).float()
        if tr.config.out_channels // 2 == latents.shape[1]:  # learned sigma, as the pipeline reads it
            out = out.chunk(2, dim=1)[0]
        return out

    def decode(self, latents, height, width, output_type="pil"):
        """SanaPipeline's decode: the latents in the VAE's dtype, then unscaled (bf16 rounds as the pipeline's)."""
        vae = self.pipe.vae
        image = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor, return_dict=False)[0]
        return self.pipe.image_processor.postprocess(image, output_type=output_type)

    def text_roles(self, prompt: str, text_len: int) -> TextRoles:
        """Gemma, ``<bos> content <pad>...`` with the padding masked out of the cross-attention: background =
        ``<bos>`` (the start token), content = the tokens after it (of the lower-cased prompt, as the pipeline
        preprocesses it)."""
        text = self.pipe._text_preprocessing(prompt, clean_caption=False)[0]
        n = min(len(self.pipe.tokenizer(text, max_length=text_len, truncation=True).input_ids), text_len)
        return TextRoles(tuple(range(1, n)), (0,), text_len)

    def size_multiple(self) -> int:
        return max(32, self.pipe.vae_scale_factor * self.transformer.config.patch_size)  # SanaPipeline's check

    @classmethod
    def tiny(cls, preset, size, seed):
        return build_tiny_sana(size, seed)


def gemma_tokenizer() -> GemmaTokenizer:
    """A character-level Gemma tokenizer (SentencePiece-style BPE, no merges, byte fallback): Gemma's special
    tokens, the 256 byte tokens, ``▁`` and printable ASCII; adds ``<bos>``, pads on the right."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    for c in ["▁"] + [chr(c) for c in range(33, 127)]:
        vocab.setdefault(c, len(vocab))
    tok = GemmaTokenizer(vocab=vocab, merges=[], add_bos_token=True, padding_side="right")
    tok.model_max_length = 8192
    return tok


def gemma2_encoder(size: TinySize, seed: int, vocab_size: int) -> Gemma2Model:
    """A 2-layer Gemma-2 (hidden size ``t5_dim`` = the transformer's ``caption_channels``)."""
    config = Gemma2Config(
        vocab_size=vocab_size,
        hidden_size=size.t5_dim,
        intermediate_size=2 * size.t5_dim,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=size.t5_dim // 4,
        max_position_embeddings=2048,
        sliding_window=64,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return seeded(seed, lambda: Gemma2Model(config))


def build_tiny_sana(size: TinySize = TinySize(), seed: int = 0) -> SanaPipeline:
    """A SANA-like pipeline: ``double_blocks`` linear-attention blocks (self-attention heads of ``head_dim``,
    cross-attention to a Gemma-2 encoder), a 2-level DC-AE (2x compression), the flow-matching DPM-Solver++ SANA ships
    with. ``sample_size`` (latent grid of the default image) as for SD3. Call it with
    ``use_resolution_binning=False`` and ``complex_human_instruction=None``."""
    tok = gemma_tokenizer()
    inner = size.heads * size.head_dim
    transformer = seeded(
        seed + 1,
        lambda: SanaTransformer2DModel(
            in_channels=size.latent_channels,
            out_channels=size.latent_channels,
            num_attention_heads=size.heads,
            attention_head_dim=size.head_dim,
            num_layers=size.double_blocks,
            num_cross_attention_heads=size.heads,
            cross_attention_head_dim=size.head_dim,
            cross_attention_dim=inner,
            caption_channels=size.t5_dim,
            mlp_ratio=2.5,
            sample_size=size.sample_size,
            patch_size=1,
        ),
    )
    n = len(size.vae_channels)
    vae = seeded(
        seed + 2,
        lambda: AutoencoderDC(
            in_channels=3,
            latent_channels=size.latent_channels,
            attention_head_dim=8,
            encoder_block_types="ResBlock",
            decoder_block_types="ResBlock",
            encoder_block_out_channels=size.vae_channels,
            decoder_block_out_channels=size.vae_channels,
            encoder_layers_per_block=(1,) * n,
            decoder_layers_per_block=(1,) * n,
            encoder_qkv_multiscales=((),) * n,
            decoder_qkv_multiscales=((),) * n,
            scaling_factor=0.41407,  # DC-AE f32c32 (SANA)
        ),
    )
    scheduler = DPMSolverMultistepScheduler(  # Sana_1600M_1024px_diffusers scheduler_config.json
        num_train_timesteps=1000,
        beta_start=0.0001,
        beta_end=0.02,
        beta_schedule="linear",
        prediction_type="flow_prediction",
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        lower_order_final=True,
        final_sigmas_type="zero",
        flow_shift=3.0,
        use_flow_sigmas=True,
        timestep_spacing="linspace",
        steps_offset=0,
    )
    return SanaPipeline(
        tokenizer=tok,
        text_encoder=gemma2_encoder(size, seed + 4, len(tok)),
        vae=vae,
        transformer=transformer,
        scheduler=scheduler,
    )
