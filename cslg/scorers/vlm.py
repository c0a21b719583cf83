"""The vision-language model route the ``vqascore`` and ``vlm-judge`` scorers share: a ``transformers``
image-text-to-text model (``AutoModelForImageTextToText`` + ``AutoProcessor`` with a chat template: Qwen2-VL,
Qwen2.5-VL, InternVL3-hf, LLaVA, ...) asked one question per image in a single user turn (the image, then the
question), with the assistant's turn opened by the chat template."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from .base import Scorer

# a compact ChatML template, IMAGE: the family's image placeholder (the tiny models' own; real checkpoints ship theirs)
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}IMAGE"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
QWEN_IMAGE_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"]
INTERNVL_IMAGE_TOKENS = {"start_image_token": "<img>", "end_image_token": "</img>",
                         "context_image_token": "<IMG_CONTEXT>", "video_token": "<video>"}


class VisionLanguageScorer(Scorer):
    """Base of the scorers that ask a chat VLM about each image; ``model`` is a Hub id or a ``save_pretrained``
    folder of any image-text-to-text model whose processor has a chat template. Pass ``dtype=torch.bfloat16`` for
    the 7B+ checkpoints on a GPU."""

    default_model: ClassVar[str] = "Qwen/Qwen2.5-VL-7B-Instruct"

    def load(self) -> None:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        self.processor = self.load_pretrained(AutoProcessor.from_pretrained)
        if not getattr(self.processor, "chat_template", None):
            raise self.missing("its processor has no chat template")
        self.tokenizer = self.processor.tokenizer
        # answers are read at the end of each row: pad on the left
        self.tokenizer.padding_side = "left"
        self.vlm = self.load_pretrained(AutoModelForImageTextToText.from_pretrained, dtype=self.dtype)
        self.vlm.to(self.device).eval()

    def chat_prompt(self, question: str) -> str:
        """The chat-template text of one user turn (an image, then ``question``) with the assistant's turn opened."""
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    def encode(self, images: list, texts: list[str]) -> Any:
        """Model inputs of a batch (one image per text), left-padded, on the scorer's device."""
        inputs = self.processor(text=texts, images=images, return_tensors="pt", padding=True)
        return inputs.to(self.device)

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A randomly initialised Qwen2-VL with its processor (``build_tiny_vlm``); returns the folder."""
        return build_tiny_vlm(folder, seed)


# tiny model families: name -> (transformers model, config and processor class names, vision config of that class)
TINY_FAMILIES: dict[str, tuple[str, str, str, dict]] = {
    "qwen2-vl": ("Qwen2VLForConditionalGeneration", "Qwen2VLConfig", "Qwen2VLProcessor",
                 dict(depth=2, embed_dim=32, hidden_size=32, mlp_ratio=2, num_heads=4)),
    "qwen2.5-vl": ("Qwen2_5_VLForConditionalGeneration", "Qwen2_5_VLConfig", "Qwen2_5_VLProcessor",
                   dict(depth=2, hidden_size=32, intermediate_size=37, num_heads=4, out_hidden_size=32,
                        window_size=56, fullatt_block_indexes=[1])),
}
TINY_TEXT = dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=512)


def tiny_tokenizer(special_tokens: list[str], named: dict[str, str] | None = None) -> Any:
    """A byte-level BPE tokenizer trained in code on the scorers' questions, with ChatML's and ``special_tokens``
    (``named``: model-specific special tokens by attribute name, e.g. InternVL's ``context_image_token``)."""
    import transformers
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    from .vlm_judge import QUESTIONS
    from .vqascore import ANSWER, QUESTION

    corpus = [QUESTION.format(prompt="a red book and a gold clock"), *QUESTIONS.values(), ANSWER, "No",
              "SCORE: 7", "8/10", "user", "assistant", "\n"] * 4
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    specials = TINY_SPECIAL_TOKENS + special_tokens + list((named or {}).values())
    bpe.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                        show_progress=False))
    return transformers.PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>",
                                                pad_token="<|endoftext|>", extra_special_tokens=named or None)


def _save(model: Any, processor: Any, folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    model.eval().save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_vlm(folder: str | os.PathLike, seed: int = 0, family: str = "qwen2-vl") -> Path:
    """Save a randomly initialised image-text-to-text model of the real class of ``family`` (``qwen2-vl``,
    ``qwen2.5-vl``, ``internvl``; 2 text and 2 vision layers, width 32) with its processor (``tiny_tokenizer``, the
    family's image processor at 28-56 px, a compact chat template) to ``folder``; returns the folder."""
    import torch
    import transformers

    if family == "internvl":
        return _build_tiny_internvl(folder, seed)
    if family not in TINY_FAMILIES:
        raise ValueError(f"family must be one of {', '.join(TINY_FAMILIES)}, internvl, not {family!r}")
    model_name, config_name, processor_name, vision = TINY_FAMILIES[family]
    tokenizer = tiny_tokenizer(QWEN_IMAGE_TOKENS)
    processor = getattr(transformers, processor_name)(
        image_processor=transformers.Qwen2VLImageProcessor(min_pixels=28 * 28, max_pixels=56 * 56),
        tokenizer=tokenizer, video_processor=transformers.Qwen2VLVideoProcessor(),
        chat_template=TINY_CHAT_TEMPLATE.replace("IMAGE", "<|vision_start|><|image_pad|><|vision_end|>"))
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in TINY_SPECIAL_TOKENS + QWEN_IMAGE_TOKENS}
    config = getattr(transformers, config_name)(
        text_config=dict(TINY_TEXT, vocab_size=len(tokenizer),
                         rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [1, 1, 2]},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=dict(vision, patch_size=14, spatial_merge_size=2, temporal_patch_size=2),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"])
    torch.manual_seed(seed)
    return _save(getattr(transformers, model_name)(config), processor, folder)


def _build_tiny_internvl(folder: str | os.PathLike, seed: int) -> Path:
    """InternVL (the ``-hf`` InternVL3 class): a 2-layer ViT on 56 px tiles (4x4 patches, pixel-shuffled to 4 image
    tokens) and a 2-layer Qwen2 language model."""
    import torch
    import transformers

    tokenizer = tiny_tokenizer([], INTERNVL_IMAGE_TOKENS)
    tile, patch = 56, 14
    tokens_per_tile = (tile // patch) ** 2 // 4  # downsample_ratio 0.5 on each side
    processor = transformers.InternVLProcessor(
        image_processor=transformers.GotOcr2ImageProcessor(size={"height": tile, "width": tile},
                                                           crop_to_patches=False),
        tokenizer=tokenizer, video_processor=transformers.InternVLVideoProcessor(),
        image_seq_length=tokens_per_tile, chat_template=TINY_CHAT_TEMPLATE.replace("IMAGE", "<IMG_CONTEXT>\n"))
    config = transformers.InternVLConfig(
        vision_config=dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=37,
                           image_size=[tile, tile], patch_size=[patch, patch]),
        text_config=dict(TINY_TEXT, model_type="qwen2", vocab_size=len(tokenizer),
                         bos_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id),
        image_token_id=tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>"), image_seq_length=tokens_per_tile)
    torch.manual_seed(seed)
    return _save(transformers.InternVLForConditionalGeneration(config), processor, folder)
