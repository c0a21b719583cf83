"""``hpsv2``: Human Preference Score v2.1, an OpenCLIP ViT-H/14 fine-tuned on the HPD v2 human choices.

Definition (Wu et al., "Human Preference Score v2: A Solid Benchmark for Evaluating Human Preferences of
Text-to-Image Synthesis", 2023; github.com/tgxs002/HPSv2, ``hpsv2/img_score.py``):

    score = cos(E_image(x), E_text(prompt))       (no logit scale: typical values 0.2 - 0.35)

with OpenCLIP's ``ViT-H-14`` holding the released weights ``HPS_v2.1_compressed.pt`` (Hub repository
``xswu/HPSv2``), its ``ViT-H-14`` tokenizer (77 tokens) and HPSv2's evaluation transform (the ``hpsv2`` package's
``image_transform(224, is_train=False)``: the whole image, its longer side resized to 224 px (bicubic, on the
[0, 1] tensor), padded to a square with black, OpenAI mean / std; not OpenCLIP's default short-side crop). Needs
the optional package ``open_clip_torch`` (``pip install 'cslg[scorers]'``); the ``hpsv2`` package itself pins old
test tools and is not needed.

``model`` is the checkpoint: the file, a folder holding ``HPS_v2.1_compressed.pt``, or a Hub repository with it.
The architecture is ``ViT-H-14`` unless the folder holds an ``open_clip_config.json`` (OpenCLIP's own format
for a model's configuration), which then gives it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import ClassVar

import torch

from .base import Scorer
from .files import checkpoint_file, require

CHECKPOINT = "HPS_v2.1_compressed.pt"
ARCHITECTURE = "ViT-H-14"


def hps_transform(image, size: int) -> torch.Tensor:
    """HPSv2's evaluation transform of one RGB PIL image: to a [0, 1] tensor, the longer side resized to ``size``
    (bicubic, antialiased), centred on a black ``size`` x ``size`` square, normalised with OpenAI's mean / std."""
    from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    x = TF.to_tensor(image)
    height, width = x.shape[1:]
    scale = size / max(height, width)
    if scale != 1.0:
        new = [round(height * scale), round(width * scale)]
        x = TF.resize(x, new, InterpolationMode.BICUBIC, antialias=True)
        pad_h, pad_w = size - new[0], size - new[1]
        x = TF.pad(x, [pad_w // 2, pad_h // 2, pad_w - pad_w // 2, pad_h - pad_h // 2], fill=0)
    return TF.normalize(x, OPENAI_DATASET_MEAN, OPENAI_DATASET_STD)


class HPSv2(Scorer):
    """HPS v2.1: ``cos(image, prompt)`` of the HPD v2 fine-tuned OpenCLIP ViT-H/14."""

    name: ClassVar[str] = "hpsv2"
    default_model: ClassVar[str] = "xswu/HPSv2"
    citation: ClassVar[str] = "Wu et al. 2023, Human Preference Score v2 (tgxs002/HPSv2), v2.1 weights"

    def load(self) -> None:
        open_clip = require(self, "open_clip", "open_clip_torch")
        file = checkpoint_file(self, CHECKPOINT)
        config = file.parent / "open_clip_config.json"
        architecture = f"local-dir:{file.parent}" if config.is_file() else ARCHITECTURE
        try:
            net = open_clip.create_model(architecture, load_weights=False)
            open_clip.load_checkpoint(net, str(file), strict=True)
        except Exception as e:  # a foreign or truncated checkpoint, a broken config: one line naming the file
            raise self.missing(f"{file.name} does not load into {architecture} ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})") from None
        self.tokenizer = open_clip.get_tokenizer(architecture)
        self.net = net.to(self.device, self.dtype).eval()

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        size = self.net.visual.image_size
        size = size[0] if isinstance(size, (tuple, list)) else size
        pixels = torch.stack([hps_transform(image, size) for image in images]).to(self.device, self.dtype)
        text = self.tokenizer(prompts).to(self.device)
        image_features = self.net.encode_image(pixels, normalize=True).float()
        text_features = self.net.encode_text(text, normalize=True).float()
        return (image_features * text_features).sum(-1).tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A tiny OpenCLIP ViT (32 px, 16-d embeddings; OpenCLIP's own 49408-token vocabulary) as
        ``open_clip_config.json`` + ``HPS_v2.1_compressed.pt`` (``{"state_dict": ...}``, as released)."""
        open_clip = require(cls, "open_clip", "open_clip_torch")
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        model_cfg = {
            "embed_dim": 16,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
        }
        (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg}, indent=2))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = open_clip.create_model(f"local-dir:{folder}", load_weights=False)
        torch.save({"state_dict": net.state_dict()}, folder / CHECKPOINT)
        return folder
