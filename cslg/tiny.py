"""Tiny, randomly initialised FLUX / SD3 / SD3.5 pipelines built offline from the real diffusers and
transformers classes. Tests and the demo run on them; benchmarks build larger ones with the same code.

Every component is created under its own fixed seed, so a preset is identical on every machine and in
every process, and the whole pipeline round-trips through ``save_pretrained`` / ``from_pretrained``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from diffusers import (
    AutoencoderKL,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)

TINY_PRESETS = ("tiny-flux", "tiny-sd3", "tiny-sd35")

# Printable ASCII plus the curly quotes the prompt files use; other characters map to <unk>.
_T5_CHARS = [chr(c) for c in range(33, 127)] + list("‘’“”")


@dataclass(frozen=True)
class TinySize:
    """Sizes of a tiny pipeline. The defaults give the presets; benchmarks scale them up."""

    double_blocks: int = 6  # FLUX double-stream blocks / SD3 joint blocks
    single_blocks: int = 6  # FLUX single-stream blocks (unused by SD3)
    heads: int = 2
    head_dim: int = 16
    text_dim: int = 32  # CLIP hidden size
    t5_dim: int = 64  # T5 d_model = transformer joint_attention_dim
    vae_channels: tuple[int, ...] = field(default=(16, 16))  # 2 levels: 2x spatial compression
    latent_channels: int = 4
    sample_size: int = 32  # SD3 default latent size (positional-embedding grid)


def clip_tokenizer() -> CLIPTokenizer:
    """A byte-level CLIP tokenizer with no merges: every byte is one token (``model_max_length=77``)."""
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in chars:
        vocab.setdefault(c, len(vocab))
    for c in chars:
        vocab.setdefault(c + "</w>", len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=77)


def t5_tokenizer() -> T5TokenizerFast:
    """A character-level T5-style (SentencePiece unigram) tokenizer built from a ``tokenizers`` object."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -5.0) for c in _T5_CHARS] + [("▁" + c, -4.0) for c in _T5_CHARS]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2, byte_fallback=False))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok = T5TokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>", pad_token="<pad>", extra_ids=0)
    tok.model_max_length = 512
    return tok


def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def _clip(size: TinySize, seed: int, with_projection: bool, vocab_size: int):
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=size.text_dim,
        intermediate_size=2 * size.text_dim,
        projection_dim=size.text_dim,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=77,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
        hidden_act="gelu",
    )
    cls = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    return _seeded(seed, lambda: cls(config))


def _t5(size: TinySize, seed: int, vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=size.t5_dim,
        d_kv=8,
        d_ff=2 * size.t5_dim,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=8,
        decoder_start_token_id=0,
        pad_token_id=0,
        eos_token_id=1,
    )
    return _seeded(seed, lambda: T5EncoderModel(config))


def _vae(size: TinySize, seed: int, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    n = len(size.vae_channels)
    return _seeded(
        seed,
        lambda: AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * n,
            up_block_types=("UpDecoderBlock2D",) * n,
            block_out_channels=size.vae_channels,
            layers_per_block=1,
            latent_channels=size.latent_channels,
            norm_num_groups=min(size.vae_channels),
            use_quant_conv=False,
            use_post_quant_conv=False,
            scaling_factor=scaling_factor,
            shift_factor=shift_factor,
        ),
    )


def build_tiny_flux(size: TinySize = TinySize(), seed: int = 0) -> FluxPipeline:
    """A guidance-distilled FLUX.1-dev-like pipeline (``guidance_embeds=True``)."""
    clip_tok, t5_tok = clip_tokenizer(), t5_tokenizer()
    rope = size.head_dim // 4
    transformer = _seeded(
        seed + 1,
        lambda: FluxTransformer2DModel(
            patch_size=1,
            in_channels=4 * size.latent_channels,
            num_layers=size.double_blocks,
            num_single_layers=size.single_blocks,
            attention_head_dim=size.head_dim,
            num_attention_heads=size.heads,
            joint_attention_dim=size.t5_dim,
            pooled_projection_dim=size.text_dim,
            guidance_embeds=True,
            axes_dims_rope=(size.head_dim - 2 * rope, rope, rope),
        ),
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096
    )
    return FluxPipeline(
        scheduler=scheduler,
        vae=_vae(size, seed + 2, scaling_factor=0.3611, shift_factor=0.1159),
        text_encoder=_clip(size, seed + 3, with_projection=False, vocab_size=len(clip_tok)),
        tokenizer=clip_tok,
        text_encoder_2=_t5(size, seed + 4, vocab_size=len(t5_tok)),
        tokenizer_2=t5_tok,
        transformer=transformer,
    )


def build_tiny_sd3(size: TinySize = TinySize(), seed: int = 0, sd35: bool = False) -> StableDiffusion3Pipeline:
    """An SD3-medium-like pipeline; ``sd35=True`` adds SD3.5's dual-attention layers and RMS qk-norm."""
    clip_tok = clip_tokenizer()
    t5_tok = t5_tokenizer()
    transformer = _seeded(
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
        vae=_vae(size, seed + 2, scaling_factor=1.5305, shift_factor=0.0609),
        text_encoder=_clip(size, seed + 3, with_projection=True, vocab_size=len(clip_tok)),
        tokenizer=clip_tok,
        text_encoder_2=_clip(size, seed + 5, with_projection=True, vocab_size=len(clip_tok)),
        tokenizer_2=clip_tokenizer(),
        text_encoder_3=_t5(size, seed + 4, vocab_size=len(t5_tok)),
        tokenizer_3=t5_tok,
        transformer=transformer,
    )


def build_tiny(name: str, size: TinySize = TinySize(), seed: int = 0):
    """Build a tiny preset by name (``tiny-flux``, ``tiny-sd3``, ``tiny-sd35``)."""
    if name == "tiny-flux":
        return build_tiny_flux(size, seed)
    if name in ("tiny-sd3", "tiny-sd35"):
        return build_tiny_sd3(size, seed, sd35=name == "tiny-sd35")
    raise ValueError(f"unknown tiny preset {name!r}; choose one of {', '.join(TINY_PRESETS)}")
