"""Tiny, randomly initialised FLUX / SD3 / SD3.5 / Qwen-Image / PixArt-Σ pipelines built offline from the
real diffusers and transformers classes. Tests and the demo run on them; benchmarks build larger ones with the
same code.

Every component is created under its own fixed seed, so a preset is identical on every machine and in
every process, and the whole pipeline round-trips through ``save_pretrained`` / ``from_pretrained``.
Tokenizers are built in code: a byte-level CLIP vocabulary, a character-level T5 (unigram) vocabulary and a
byte-level Qwen2 BPE whose few merges make Qwen-Image's prompt-template prefix exactly the 34 tokens the
pipeline drops.

Presets: ``tiny-flux`` (FLUX.1-dev-like, guidance-distilled), ``tiny-sd3``, ``tiny-sd35`` (dual attention,
RMS qk-norm), ``tiny-qwenimage`` (``QwenImagePipeline``: Qwen2.5-VL text encoder, ``AutoencoderKLQwenImage``,
true CFG) and ``tiny-pixart-sigma`` (``PixArtSigmaPipeline``: T5, ``AutoencoderKL``, the DPM-Solver++ scheduler
PixArt-Σ ships with, learned-sigma output). Call PixArt-Σ with ``use_resolution_binning=False`` and
``clean_caption=False``.
"""

from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field

import torch
from diffusers import (
    AutoencoderKL,
    AutoencoderKLQwenImage,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
)
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Tokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

from .options import TINY_PRESETS

# Printable ASCII plus the curly quotes the prompt files use; other characters map to <unk>.
_T5_CHARS = [chr(c) for c in range(33, 127)] + list("‘’“”")

# QwenImagePipeline.prompt_template_encode (diffusers 0.42); the pipeline drops its first 34 tokens (the part
# before "{}"), so the tiny Qwen2 tokenizer carries merges that make each word of the template one token.
QWEN_PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, "
    "spatial relationships of the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n"
    "<|im_start|>assistant\n"
)
_QWEN_SPECIALS = (
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
    "<|video_pad|>",
)

@dataclass(frozen=True)
class TinySize:
    """Sizes of a tiny pipeline. The defaults give the presets; benchmarks scale them up."""

    double_blocks: int = 6  # FLUX double-stream / SD3 joint / Qwen-Image MMDiT / PixArt DiT blocks
    single_blocks: int = 6  # FLUX single-stream blocks (unused by SD3)
    heads: int = 2
    head_dim: int = 16
    text_dim: int = 32  # CLIP hidden size
    t5_dim: int = 64  # T5 d_model / Qwen2.5-VL hidden size = transformer joint_attention_dim (caption_channels)
    vae_channels: tuple[int, ...] = field(default=(16, 16))  # 2 levels: 2x spatial compression
    latent_channels: int = 4
    sample_size: int = 32  # SD3 / PixArt default latent size (positional-embedding grid)


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


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen2 BPE tokenizer: the 256 byte symbols, Qwen's chat special tokens, and merges that make
    each word of :data:`QWEN_PROMPT_TEMPLATE` one token (so its prefix is the 34 tokens the pipeline drops).
    Other text is mostly one token per byte."""
    split = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for text in re.split("|".join(map(re.escape, _QWEN_SPECIALS)), QWEN_PROMPT_TEMPLATE.replace("{}", "")):
        for word, _ in split.pre_tokenize_str(text):
            for i in range(2, len(word) + 1):  # left-to-right chain: w[:1]+w[1], w[:2]+w[2], ...
                if word[:i] not in vocab:
                    merges.append((word[: i - 1], word[i - 1]))
                    vocab[word[:i]] = len(vocab)
    for special in _QWEN_SPECIALS:
        vocab[special] = len(vocab)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(_QWEN_SPECIALS[1:]))
    tok.model_max_length = 32768
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


def _qwen_text_encoder(size: TinySize, seed: int, tok: Qwen2Tokenizer) -> Qwen2_5_VLForConditionalGeneration:
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
    return _seeded(seed, lambda: Qwen2_5_VLForConditionalGeneration(config))


def build_tiny_qwenimage(size: TinySize = TinySize(), seed: int = 0) -> QwenImagePipeline:
    """A Qwen-Image-like pipeline: ``double_blocks`` MMDiT blocks, a Qwen2.5-VL text encoder, the Qwen-Image VAE
    (``len(vae_channels)`` levels, real latent mean/std cycled to ``latent_channels``) and Qwen-Image's
    dynamically shifted flow-matching scheduler. True CFG needs ``negative_prompt`` and ``true_cfg_scale > 1``."""
    tok = qwen_tokenizer()
    hw_rope = (size.head_dim * 7 // 16) // 2 * 2  # Qwen-Image: (16, 56, 56) for head_dim 128
    transformer = _seeded(
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
    vae = _seeded(
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
        text_encoder=_qwen_text_encoder(size, seed + 3, tok),
        tokenizer=tok,
        transformer=transformer,
    )


def build_tiny_pixart_sigma(size: TinySize = TinySize(), seed: int = 0) -> PixArtSigmaPipeline:
    """A PixArt-Σ-like pipeline: ``double_blocks`` DiT blocks (self-attention ``attn1``, cross-attention ``attn2``
    to T5), learned-sigma output (``out_channels = 2 * latent_channels``; the pipeline keeps the first half), the
    SDXL-VAE scaling factor and the DPM-Solver++ scheduler PixArt-Σ ships with. ``sample_size`` is the latent grid
    of the default image, as for SD3. Call it with ``use_resolution_binning=False`` and ``clean_caption=False``."""
    tok = t5_tokenizer()
    inner = size.heads * size.head_dim
    transformer = _seeded(
        seed + 1,
        lambda: PixArtTransformer2DModel(
            num_attention_heads=size.heads,
            attention_head_dim=size.head_dim,
            in_channels=size.latent_channels,
            out_channels=2 * size.latent_channels,
            num_layers=size.double_blocks,
            cross_attention_dim=inner,
            caption_channels=size.t5_dim,
            sample_size=size.sample_size,
            patch_size=2,
            norm_type="ada_norm_single",
            norm_elementwise_affine=False,
            norm_eps=1e-6,
            attention_bias=True,
            activation_fn="gelu-approximate",
            num_embeds_ada_norm=1000,
            use_additional_conditions=False,
        ),
    )
    scheduler = DPMSolverMultistepScheduler(  # PixArt-alpha/PixArt-Sigma-XL-2-1024-MS scheduler_config.json
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
    return PixArtSigmaPipeline(
        tokenizer=tok,
        text_encoder=_t5(size, seed + 4, vocab_size=len(tok)),
        vae=_vae(size, seed + 2, scaling_factor=0.13025, shift_factor=None),
        transformer=transformer,
        scheduler=scheduler,
    )


def build_tiny(name: str, size: TinySize = TinySize(), seed: int = 0):
    """Build a tiny preset by name (one of :data:`TINY_PRESETS`)."""
    if name == "tiny-flux":
        return build_tiny_flux(size, seed)
    if name in ("tiny-sd3", "tiny-sd35"):
        return build_tiny_sd3(size, seed, sd35=name == "tiny-sd35")
    if name == "tiny-qwenimage":
        return build_tiny_qwenimage(size, seed)
    if name == "tiny-pixart-sigma":
        return build_tiny_pixart_sigma(size, seed)
    raise ValueError(f"unknown tiny preset {name!r}; choose one of {', '.join(TINY_PRESETS)}")
