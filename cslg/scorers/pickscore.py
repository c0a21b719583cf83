"""``pickscore``: PickScore, a CLIP-H model fine-tuned on the Pick-a-Pic human preferences.

Definition (Kirstain et al., "Pick-a-Pic: An Open Dataset of User Preferences for Text-to-Image Generation",
NeurIPS 2023; github.com/yuvalkirstain/PickScore):

    score = exp(logit_scale) * cos(E_image(x), E_text(prompt))

with the checkpoint ``yuvalkirstain/PickScore_v1`` (transformers ``CLIPModel``, ViT-H/14) and the processor of
``laion/CLIP-ViT-H-14-laion2B-s32B-b79K`` (prompts padded and truncated to 77 tokens). This is CLIPModel's own
``logits_per_image`` for the image and its prompt. Scores are around 20 for real checkpoints; only differences
between images of one prompt are meaningful (the paper's win probability is their softmax).

The processor comes from the model's folder when it holds one (``processor_config.json`` or
``preprocessor_config.json``: one folder for offline use), else from ``processor``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from transformers import CLIPConfig, CLIPModel, CLIPProcessor

from .aesthetic_v1 import tiny_image_processor
from .base import Scorer
from .files import companion_missing


class PickScore(Scorer):
    """PickScore v1: ``exp(logit_scale) * cos(image, prompt)`` of the Pick-a-Pic fine-tuned CLIP-H."""

    name: ClassVar[str] = "pickscore"
    default_model: ClassVar[str] = "yuvalkirstain/PickScore_v1"
    citation: ClassVar[str] = "Kirstain et al. 2023, Pick-a-Pic (yuvalkirstain/PickScore)"
    default_processor: ClassVar[str] = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, processor: str | os.PathLike | None = None):
        self.processor_name = str(processor) if processor is not None else None
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def load(self) -> None:
        self.net = self.load_pretrained(CLIPModel.from_pretrained).to(self.device, self.dtype).eval()
        own = any((Path(self.model) / f).is_file() for f in ("processor_config.json", "preprocessor_config.json"))
        name = self.processor_name or (self.model if own else self.default_processor)
        try:
            self.processor = CLIPProcessor.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise companion_missing(self, name, f"the processor of {self.default_processor}", e) from None

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        inputs = self.processor(images=images, text=prompts, padding=True, truncation=True, max_length=77,
                                return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        return self.net(**inputs).logits_per_image.diagonal().float().tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A tiny ``CLIPModel`` (16-d embeddings) with a byte-level CLIP tokenizer and its processor."""
        from cslg.families.tiny import clip_tokenizer

        folder = Path(folder)
        tokenizer = clip_tokenizer()
        config = CLIPConfig(
            text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                             num_attention_heads=2, max_position_embeddings=77, bos_token_id=0, eos_token_id=1,
                             pad_token_id=1),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                               image_size=32, patch_size=8),
            projection_dim=16,
        )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            CLIPModel(config).save_pretrained(folder)
        CLIPProcessor(image_processor=tiny_image_processor(), tokenizer=tokenizer).save_pretrained(folder)
        return folder
