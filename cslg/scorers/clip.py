"""``clip``: CLIP score, the alignment of an image with its prompt.

Definition (Hessel et al., "CLIPScore: A Reference-free Evaluation Metric for Image Captioning", EMNLP 2021; as
torchmetrics' ``CLIPScore`` computes it for text-to-image models):

    clip = 100 * max(cos(E_image, E_text), 0)

with ``E_image = CLIPModel.get_image_features(pixels)`` (the projected pooled vision output) and
``E_text = CLIPModel.get_text_features(tokens)`` (the projected end-of-text token), the prompt truncated to the
text tower's positions (77 tokens). Hessel et al.'s own captioning score is ``2.5 * max(cos, 0)`` with the prefix
"A photo depicts"; text-to-image papers (and torchmetrics) use the factor 100 and the bare prompt, as here.
Default model ``openai/clip-vit-large-patch14`` (torchmetrics' default); any ``CLIPModel`` with its processor,
from the Hub or a ``save_pretrained`` folder, works.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

from .base import Scorer


def features(output) -> torch.Tensor:
    """The embedding tensor of ``get_image_features`` / ``get_text_features`` (a tensor, or a model output whose
    ``pooler_output`` holds it, depending on the transformers version)."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


class CLIPScore(Scorer):
    """CLIP score ``100 * max(cos(E_image, E_text), 0)`` (Hessel et al. 2021), 0-100."""

    name: ClassVar[str] = "clip"
    default_model: ClassVar[str] = "openai/clip-vit-large-patch14"
    citation: ClassVar[str] = "Hessel et al. 2021, CLIPScore (EMNLP); torchmetrics CLIPScore"

    def load(self) -> None:
        self.net = self.load_pretrained(CLIPModel.from_pretrained).to(self.device, self.dtype).eval()
        self.processor = self.load_pretrained(CLIPProcessor.from_pretrained)
        self.max_tokens = self.net.config.text_config.max_position_embeddings

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device, self.dtype)
        text = self.processor(text=prompts, return_tensors="pt", padding=True, truncation=True,
                              max_length=self.max_tokens)
        image_features = features(self.net.get_image_features(pixel_values=pixels)).float()
        text_features = features(self.net.get_text_features(input_ids=text.input_ids.to(self.device),
                                                            attention_mask=text.attention_mask.to(self.device))).float()
        cosine = torch.nn.functional.cosine_similarity(image_features, text_features, dim=-1)
        return (100 * cosine.clamp(min=0)).tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A randomly initialised two-layer ``CLIPModel`` (32 px images, 8 px patches) with the tiny byte-level CLIP
        tokenizer and a 32 px ``CLIPImageProcessor``, as a ``save_pretrained`` folder."""
        from ..families.tiny import clip_tokenizer, seeded

        tokenizer = clip_tokenizer()
        tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
        config = CLIPConfig(
            text_config=dict(tower, vocab_size=len(tokenizer), max_position_embeddings=77, bos_token_id=0,
                             eos_token_id=1, pad_token_id=1),
            vision_config=dict(tower, image_size=32, patch_size=8),
            projection_dim=16,
        )
        folder = Path(folder)
        seeded(seed, lambda: CLIPModel(config)).save_pretrained(folder)
        image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
        CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
        return folder
