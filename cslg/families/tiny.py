"""The shared parts of the tiny presets: randomly initialised components of the real diffusers and transformers
classes, built offline, and tokenizers built in code. Each family's module builds its own preset from these
(``Adapter.tiny``); tests and the demo run on them, benchmarks build larger ones with the same code.

Every component is created under its own fixed seed, so a preset is identical on every machine and in every
process, and the whole pipeline round-trips through ``save_pretrained`` / ``from_pretrained``. Tokenizers: a
byte-level CLIP vocabulary, a character-level T5 (unigram) vocabulary and a byte-level Qwen2 BPE whose few merges
make Qwen-Image's prompt-template prefix exactly the 34 tokens the pipeline drops.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Sequence

import torch
from diffusers import AutoencoderKL
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    Qwen2Tokenizer,
    T5Config,
    T5EncoderModel,
    T5TokenizerFast,
)
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

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


def byte_level_split() -> pre_tokenizers.PreTokenizer:
    """Qwen2's pre-tokenizer: its split regex, then bytes as printable symbols."""
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


def byte_bpe_backend(texts: Sequence[str], specials: Sequence[str]) -> Tokenizer:
    """A ``tokenizers`` byte-level BPE of :func:`byte_bpe` (for ``PreTrainedTokenizerFast(tokenizer_object=...)``)."""
    backend = Tokenizer(models.BPE(*byte_bpe(texts, specials)))
    backend.pre_tokenizer = byte_level_split()
    backend.decoder = decoders.ByteLevel()
    return backend


def byte_bpe(texts: Sequence[str], specials: Sequence[str]) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The vocabulary and merges of a byte-level BPE on Qwen2's pre-tokenizer: the 256 byte symbols, merges that make
    each word of ``texts`` one token, then ``specials`` (which split ``texts`` and are not merged)."""
    split = byte_level_split()
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    merges: list[tuple[str, str]] = []
    for text in texts:
        for part in re.split("|".join(map(re.escape, specials)), text):
            for word, _ in split.pre_tokenize_str(part):
                for i in range(2, len(word) + 1):  # left-to-right chain: w[:1]+w[1], w[:2]+w[2], ...
                    if word[:i] not in vocab:
                        merges.append((word[: i - 1], word[i - 1]))
                        vocab[word[:i]] = len(vocab)
    for special in specials:
        vocab[special] = len(vocab)
    return vocab, merges


def qwen_tokenizer() -> Qwen2Tokenizer:
    """A byte-level Qwen2 BPE tokenizer: the 256 byte symbols, Qwen's chat special tokens, and merges that make
    each word of :data:`QWEN_PROMPT_TEMPLATE` one token (so its prefix is the 34 tokens the pipeline drops).
    Other text is mostly one token per byte."""
    vocab, merges = byte_bpe([QWEN_PROMPT_TEMPLATE.replace("{}", "")], _QWEN_SPECIALS)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, extra_special_tokens=list(_QWEN_SPECIALS[1:]))
    tok.model_max_length = 32768
    return tok


def seeded(seed: int, build):
    """``build()`` under ``torch.manual_seed(seed)`` (the global generator is left as it was), in eval mode."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build().eval()


def clip_text_encoder(size: TinySize, seed: int, with_projection: bool, vocab_size: int):
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
    return seeded(seed, lambda: cls(config))


def t5_encoder(size: TinySize, seed: int, vocab_size: int) -> T5EncoderModel:
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
    return seeded(seed, lambda: T5EncoderModel(config))


def kl_vae(size: TinySize, seed: int, scaling_factor: float, shift_factor: float) -> AutoencoderKL:
    n = len(size.vae_channels)
    return seeded(
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
