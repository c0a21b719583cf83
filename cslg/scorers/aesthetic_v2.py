"""``aesthetic-v2``: the improved LAION aesthetic predictor (the "LAION-Aesthetics v2" scorer).

Definition (christophschuhmann/improved-aesthetic-predictor, ``simple_inference.py``): an MLP without activations
on the L2-normalised CLIP ViT-L/14 image embedding (openai ``ViT-L/14``'s ``encode_image``, which is transformers'
``CLIPVisionModelWithProjection.image_embeds`` of ``openai/clip-vit-large-patch14``),

    score = L5(L4(L3(L2(L1(e / ||e||)))))     768 -> 1024 -> 128 -> 64 -> 16 -> 1 (dropout between, off at eval)

trained on SAC + LAION-Logos + AVA ratings, 1-10 scale. The released head is ``sac+logos+ava1-l14-linearMSE.pth``
(a state dict ``layers.{0,2,4,6,7}.{weight,bias}``).

``model`` is the head: that file, a folder holding it, or a Hub repository with it (default
``camenduru/improved-aesthetic-predictor``). The CLIP model comes from the same folder when the folder also holds a
CLIP ``save_pretrained`` copy (``config.json``: one folder for offline use), else from ``clip_model``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

from .aesthetic_v1 import normalised_image_embeds, tiny_image_processor, tiny_vision_config
from .base import Scorer
from .files import checkpoint_file, companion_missing, load_state_dict

HEAD_FILE = "sac+logos+ava1-l14-linearMSE.pth"
LINEAR_INDICES = (0, 2, 4, 6, 7)  # nn.Sequential(Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear)


def mlp_head(state: dict[str, torch.Tensor]) -> nn.Sequential:
    """The released MLP with the sizes of ``state`` (its ``layers.`` prefix removed); raises KeyError / RuntimeError
    when ``state`` has another layout."""
    widths = [state[f"{i}.weight"].shape for i in LINEAR_INDICES]
    modules: list[nn.Module] = []
    for i, (out_features, in_features) in zip(LINEAR_INDICES, widths):
        modules += [nn.Dropout()] * (i - len(modules)) + [nn.Linear(in_features, out_features)]
    head = nn.Sequential(*modules)
    head.load_state_dict(state, strict=True)
    return head


class AestheticV2(Scorer):
    """Improved LAION aesthetic predictor (MLP on the normalised CLIP ViT-L/14 image embedding), 1-10 scale."""

    name: ClassVar[str] = "aesthetic-v2"
    default_model: ClassVar[str] = "camenduru/improved-aesthetic-predictor"
    citation: ClassVar[str] = "christophschuhmann/improved-aesthetic-predictor (sac+logos+ava1-l14-linearMSE)"
    needs_prompts: ClassVar[bool] = False
    default_clip: ClassVar[str] = "openai/clip-vit-large-patch14"

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, clip_model: str | os.PathLike | None = None):
        self.clip_model = str(clip_model) if clip_model is not None else None
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def load(self) -> None:
        file = checkpoint_file(self, HEAD_FILE)
        state = load_state_dict(self, file)
        try:
            head = mlp_head({k.removeprefix("layers."): v for k, v in state.items()})
        except (KeyError, RuntimeError) as e:
            raise self.missing(f"{file.name} is not the linearMSE MLP head ({type(e).__name__}: "
                               f"{str(e).splitlines()[0]})") from None
        clip = self.clip_model or (self.model if (Path(self.model) / "config.json").is_file() else self.default_clip)
        try:
            self.vision = CLIPVisionModelWithProjection.from_pretrained(clip).to(self.device, self.dtype).eval()
            self.processor = CLIPImageProcessor.from_pretrained(clip)
        except (OSError, ValueError) as e:
            raise companion_missing(self, clip, f"{self.default_clip} (with {HEAD_FILE})", e) from None
        if self.vision.config.projection_dim != head[0].in_features:
            raise self.missing(f"the head takes {head[0].in_features}-d embeddings but {clip!r} gives "
                               f"{self.vision.config.projection_dim}-d ones")
        self.head = head.to(self.device).eval()

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        embeds = normalised_image_embeds(self.vision, self.processor, images, self.device, self.dtype)
        return self.head(embeds).squeeze(-1).tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A tiny CLIP vision tower and a head of the released layout (16 -> 1024 -> 128 -> 64 -> 16 -> 1) in one
        folder."""
        folder = Path(folder)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vision = CLIPVisionModelWithProjection(tiny_vision_config())
            sizes = [vision.config.projection_dim, 1024, 128, 64, 16, 1]
            state = {}
            for i, (n_in, n_out) in zip(LINEAR_INDICES, zip(sizes, sizes[1:])):
                layer = nn.Linear(n_in, n_out)
                state[f"layers.{i}.weight"], state[f"layers.{i}.bias"] = layer.weight.detach(), layer.bias.detach()
        vision.save_pretrained(folder)
        tiny_image_processor().save_pretrained(folder)
        torch.save(state, folder / HEAD_FILE)
        return folder
