"""``aesthetic-v1``: the LAION aesthetic predictor v1, the measure of the paper's aesthetics experiments.

Definition (LAION-AI/aesthetic-predictor; Schuhmann et al., LAION-5B, NeurIPS 2022 datasets track): a linear
head on the L2-normalised CLIP ViT-L/14 image embedding,

    score = w . e / ||e|| + b,     e = visual_projection(pooled ViT-L/14 output)   (CLIP's ``image_embeds``)

on a 1-10 scale of rated aesthetics. The released checkpoint is ``shunk031/aesthetics-predictor-v1-vit-large-patch14``
(``AestheticsPredictorV1`` of the ``simple-aesthetics-predictor`` package): a ``CLIPVisionModelWithProjection`` whose
state dict carries one more module, ``predictor`` (``nn.Linear(projection_dim, 1)``). Its keys therefore map
one to one: ``vision_model.*`` and ``visual_projection.weight`` to transformers' ``CLIPVisionModelWithProjection``,
``predictor.weight`` / ``predictor.bias`` to the head, so the checkpoint loads into transformers' class plus the
linear layer below without that package. Images go through the checkpoint's own ``CLIPImageProcessor`` (224 px
bicubic resize, centre crop, CLIP mean / std).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

from .base import Scorer


class CLIPVisionWithLinearHead(CLIPVisionModelWithProjection):
    """The layout of the released v1 checkpoint: CLIP's vision tower and projection plus ``predictor``."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__(config)
        self.predictor = nn.Linear(config.projection_dim, 1)
        self.post_init()


@torch.inference_mode()
def normalised_image_embeds(vision: CLIPVisionModelWithProjection, processor, images: list,
                            device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``image_embeds / ||image_embeds||`` of a batch of PIL images (float32, on ``device``)."""
    pixels = processor(images=images, return_tensors="pt").pixel_values.to(device, dtype)
    embeds = vision(pixel_values=pixels).image_embeds.float()
    return embeds / embeds.norm(dim=-1, keepdim=True)


def tiny_vision_config() -> CLIPVisionConfig:
    """The vision tower of the tiny models (32 px images, 8 px patches, 16-d embedding)."""
    return CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                            image_size=32, patch_size=8, projection_dim=16)


def tiny_image_processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


class AestheticV1(Scorer):
    """LAION aesthetic predictor v1 (linear head on the normalised CLIP ViT-L/14 image embedding), 1-10 scale."""

    name: ClassVar[str] = "aesthetic-v1"
    default_model: ClassVar[str] = "shunk031/aesthetics-predictor-v1-vit-large-patch14"
    citation: ClassVar[str] = "LAION-AI/aesthetic-predictor (Schuhmann et al. 2022, LAION-5B)"
    needs_prompts: ClassVar[bool] = False

    def load(self) -> None:
        model, info = self.load_pretrained(CLIPVisionWithLinearHead.from_pretrained, output_loading_info=True)
        if any(k.startswith("predictor.") for k in info["missing_keys"]):
            raise self.missing("the checkpoint has no predictor.weight / predictor.bias (not an aesthetics "
                               "predictor v1 checkpoint)")
        self.net = model.to(self.device, self.dtype).eval()
        self.net.predictor.float()  # the head runs on the float32 normalised embedding
        self.processor = self.load_pretrained(CLIPImageProcessor.from_pretrained)

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        embeds = normalised_image_embeds(self.net, self.processor, images, self.device, self.dtype)
        return self.net.predictor(embeds).squeeze(-1).tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        folder = Path(folder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = CLIPVisionWithLinearHead(tiny_vision_config())
            nn.init.normal_(model.predictor.bias, mean=5.0)  # CLIP's init zeroes biases; the released head has one
        model.save_pretrained(folder)
        tiny_image_processor().save_pretrained(folder)
        return folder
