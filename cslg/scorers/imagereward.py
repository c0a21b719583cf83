"""``imagereward``: ImageReward v1.0, a BLIP reward model trained on 137k expert comparisons of generated images.

Definition (Xu et al., "ImageReward: Learning and Evaluating Human Preferences for Text-to-Image Generation",
NeurIPS 2023; github.com/THUDM/ImageReward, ``ImageReward.score``):

    f = BERT_cross(prompt | ViT(x))[CLS]              BLIP's text encoder attending to the ViT-L/16 image tokens
    score = (MLP(f) - 0.16717362830052426) / 1.0333394966054072

with the prompt padded / truncated to 35 ``bert-base-uncased`` tokens, the image resized (bicubic, short side) and
centre-cropped to 224 px with CLIP's mean / std, and ``MLP`` the 768-1024-128-64-16-1 head without activations (the
layout of the LAION aesthetic head). Scores are standardised: about 0 for an average generated image, +-1 for one
standard deviation of the training comparisons.

The released ``ImageReward.pt`` (Hub repository ``THUDM/ImageReward``, beside its ``med_config.json``) is loaded
into transformers' BLIP classes without the ``image-reward`` package (which pins timm 0.6 and fairscale and does not
import under transformers 5). Key mapping, checkpoint -> transformers:

    blip.visual_encoder.cls_token / pos_embed           -> (BlipVisionModel) embeddings.class_embedding /
                                                           embeddings.position_embedding
    blip.visual_encoder.patch_embed.proj.*              -> embeddings.patch_embedding.*
    blip.visual_encoder.blocks.{i}.norm1 / norm2        -> encoder.layers.{i}.layer_norm1 / layer_norm2
    blip.visual_encoder.blocks.{i}.attn.qkv / attn.proj -> encoder.layers.{i}.self_attn.qkv / self_attn.projection
    blip.visual_encoder.blocks.{i}.mlp.fc1 / fc2        -> encoder.layers.{i}.mlp.fc1 / fc2
    blip.visual_encoder.norm                            -> post_layernorm
    blip.text_encoder.*                                 -> BlipTextModel (same names: BLIP's med.py BERT)
    mlp.layers.{0,2,4,6,7}                              -> the head
    blip.vision_proj / blip.text_proj                   -> unused by the score

The ViT's sizes are read from the checkpoint's shapes (heads of width 64, as BLIP's ViT-B/16 and ViT-L/16; layer
norm eps 1e-6), the text encoder's from ``med_config.json``. The tokenizer comes from the model's folder when it
holds one, else from ``tokenizer`` (default ``bert-base-uncased``), with BLIP's two added tokens ``[DEC]``,
``[ENC]``.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from transformers import BertTokenizer, BlipTextConfig, BlipTextModel, BlipVisionConfig, BlipVisionModel

from .aesthetic_v2 import LINEAR_INDICES, mlp_head
from .base import Scorer
from .files import checkpoint_file, companion_missing, load_state_dict, require

CHECKPOINT = "ImageReward.pt"
MED_CONFIG = "med_config.json"
REWARD_MEAN, REWARD_STD = 0.16717362830052426, 1.0333394966054072
PROMPT_TOKENS = 35
HEAD_WIDTH = 64
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)

# BLIP's ViT (timm layout) -> transformers' BlipVisionModel; "{i}" is a block index
VISION_KEYS = (
    ("cls_token", "embeddings.class_embedding"),
    ("pos_embed", "embeddings.position_embedding"),
    ("patch_embed.proj.", "embeddings.patch_embedding."),
    ("blocks.{i}.norm1.", "encoder.layers.{i}.layer_norm1."),
    ("blocks.{i}.norm2.", "encoder.layers.{i}.layer_norm2."),
    ("blocks.{i}.attn.qkv.", "encoder.layers.{i}.self_attn.qkv."),
    ("blocks.{i}.attn.proj.", "encoder.layers.{i}.self_attn.projection."),
    ("blocks.{i}.mlp.", "encoder.layers.{i}.mlp."),
    ("norm.", "post_layernorm."),
)


def rename(key: str, table: tuple[tuple[str, str], ...], reverse: bool = False) -> str:
    """``key`` with its prefix renamed by the first matching row of ``table`` (right to left when ``reverse``)."""
    for source, target in table:
        if reverse:
            source, target = target, source
        pattern = "^" + re.escape(source).replace(re.escape("{i}"), r"(?P<i>\d+)")
        match = re.match(pattern, key)
        if match:
            return target.replace("{i}", match.groupdict().get("i") or "") + key[match.end():]
    raise KeyError(key)


def vision_config(state: dict[str, torch.Tensor]) -> BlipVisionConfig:
    """The ViT's sizes from its state dict (transformers names)."""
    patch = state["embeddings.patch_embedding.weight"]
    positions = state["embeddings.position_embedding"].shape[1]
    layers = 1 + max(int(k.split(".")[2]) for k in state if k.startswith("encoder.layers."))
    return BlipVisionConfig(hidden_size=patch.shape[0], patch_size=patch.shape[-1],
                            image_size=round((positions - 1) ** 0.5) * patch.shape[-1], num_hidden_layers=layers,
                            num_attention_heads=patch.shape[0] // HEAD_WIDTH,
                            intermediate_size=state["encoder.layers.0.mlp.fc1.weight"].shape[0], layer_norm_eps=1e-6)


def text_config(med_config: dict[str, Any], vision_width: int) -> BlipTextConfig:
    """BLIP's med (BERT) configuration as transformers' BlipTextConfig, cross-attending to ``vision_width``."""
    fields = ("vocab_size", "hidden_size", "intermediate_size", "num_attention_heads", "num_hidden_layers",
              "max_position_embeddings", "layer_norm_eps", "hidden_act", "pad_token_id")
    return BlipTextConfig(**{k: med_config[k] for k in fields}, encoder_hidden_size=vision_width,
                          initializer_range=med_config.get("initializer_range", 0.02),
                          bos_token_id=None)  # BLIP's [DEC] (generation only); the encoder needs no special ids


class ImageReward(Scorer):
    """ImageReward v1.0: the BLIP reward model's standardised score of an image for its prompt."""

    name: ClassVar[str] = "imagereward"
    default_model: ClassVar[str] = "THUDM/ImageReward"
    citation: ClassVar[str] = "Xu et al. 2023, ImageReward (THUDM/ImageReward), v1.0 weights"
    default_tokenizer: ClassVar[str] = "bert-base-uncased"

    def __init__(self, model: str | os.PathLike | None = None, device: Any = None, dtype: Any = None,
                 batch_size: int = 16, tokenizer: str | os.PathLike | None = None):
        self.tokenizer_name = str(tokenizer) if tokenizer is not None else None
        super().__init__(model=model, device=device, dtype=dtype, batch_size=batch_size)

    def load(self) -> None:
        transforms = require(self, "torchvision.transforms", "torchvision")
        file = checkpoint_file(self, CHECKPOINT)
        med = file.parent / MED_CONFIG if Path(self.model).exists() else checkpoint_file(self, MED_CONFIG)
        if not med.is_file():
            raise self.missing(f"no {MED_CONFIG} beside {file.name}")
        state = load_state_dict(self, file)
        try:
            vision_state = {rename(k.removeprefix("blip.visual_encoder."), VISION_KEYS): v
                            for k, v in state.items() if k.startswith("blip.visual_encoder.")}
            text_state = {k.removeprefix("blip.text_encoder."): v for k, v in state.items()  # position_ids: a
                          if k.startswith("blip.text_encoder.") and not k.endswith("position_ids")}  # buffer
            vision = BlipVisionModel(vision_config(vision_state))
            vision.load_state_dict(vision_state, strict=True)
            text = BlipTextModel(text_config(json.loads(med.read_text()), vision.config.hidden_size),
                                 add_pooling_layer=False)
            text.load_state_dict(text_state, strict=True)
            head = mlp_head({k.removeprefix("mlp.layers."): v for k, v in state.items() if k.startswith("mlp.")})
        except (KeyError, RuntimeError, ValueError) as e:
            raise self.missing(f"{file.name} is not an ImageReward checkpoint ({type(e).__name__}: "
                               f"{str(e).strip().splitlines()[0][:120]})") from None
        self.vision = vision.to(self.device, self.dtype).eval()
        self.text = text.to(self.device, self.dtype).eval()
        self.head = head.to(self.device).eval()
        self.tokenizer = self._tokenizer()
        size = self.vision.config.image_size
        self.preprocess = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ])

    def _tokenizer(self) -> BertTokenizer:
        own = any((Path(self.model) / f).is_file() for f in ("tokenizer.json", "vocab.txt"))
        name = self.tokenizer_name or (self.model if own else self.default_tokenizer)
        try:
            tokenizer = BertTokenizer.from_pretrained(name)
        except (OSError, ValueError) as e:
            raise companion_missing(self, name, f"the tokenizer of {self.default_tokenizer}", e) from None
        tokenizer.add_tokens(["[DEC]", "[ENC]"], special_tokens=True)  # BLIP's decoder / encoder tokens
        return tokenizer

    @torch.inference_mode()
    def score_batch(self, images: list, prompts: list[str]) -> list[float]:
        pixels = torch.stack([self.preprocess(image) for image in images]).to(self.device, self.dtype)
        tokens = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=PROMPT_TOKENS,
                                return_tensors="pt").to(self.device)
        image_tokens = self.vision(pixel_values=pixels).last_hidden_state
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=self.device)
        features = self.text(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask,
                             encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask,
                             is_decoder=False).last_hidden_state[:, 0].float()
        return ((self.head(features) - REWARD_MEAN) / REWARD_STD).squeeze(-1).tolist()

    @classmethod
    def save_tiny(cls, folder: str | os.PathLike, seed: int = 0) -> Path:
        """A tiny BLIP (32 px ViT of 2 blocks, 2-layer text encoder) and head, written as the released files:
        ``ImageReward.pt`` in the checkpoint's own key names, ``med_config.json``, and a BERT tokenizer."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tokenizer = BertTokenizer(vocab=tiny_vocab())
        med = {"vocab_size": len(tokenizer) + 2, "hidden_size": 32, "intermediate_size": 64,
               "num_attention_heads": 2, "num_hidden_layers": 2, "max_position_embeddings": 64,
               "layer_norm_eps": 1e-12, "hidden_act": "gelu", "pad_token_id": 0, "initializer_range": 0.2,
               "add_cross_attention": True,
               "model_type": "bert", "architectures": ["BertModel"]}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            vision = BlipVisionModel(BlipVisionConfig(hidden_size=2 * HEAD_WIDTH, intermediate_size=256,
                                                      num_hidden_layers=2, num_attention_heads=2, image_size=32,
                                                      patch_size=8, layer_norm_eps=1e-6, initializer_range=0.2))
            text = BlipTextModel(text_config(med, vision.config.hidden_size), add_pooling_layer=False)
            sizes = [med["hidden_size"], 1024, 128, 64, 16, 1]
            head = {f"mlp.layers.{i}.{k}": v for i, (a, b) in zip(LINEAR_INDICES, zip(sizes, sizes[1:]))
                    for k, v in nn.Linear(a, b).state_dict().items()}
            state = {"blip.visual_encoder." + rename(k, VISION_KEYS, reverse=True): v
                     for k, v in vision.state_dict().items()}
            state |= {"blip.text_encoder." + k: v for k, v in text.state_dict().items()}
            state |= head | {"blip.vision_proj.weight": torch.randn(8, vision.config.hidden_size)}
            for k, v in state.items():  # transformers' init gives unit norms and zero biases: make them matter
                if k.endswith("bias") or "norm" in k.lower():
                    v.add_(0.1 * torch.randn_like(v))
        torch.save(state, folder / CHECKPOINT)
        (folder / MED_CONFIG).write_text(json.dumps(med, indent=2))
        tokenizer.save_pretrained(folder)
        return folder


def tiny_vocab() -> dict[str, int]:
    """A WordPiece vocabulary of BERT's special tokens and single characters (every word splits into letters)."""
    chars = [chr(c) for c in range(33, 127) if not chr(c).isupper()]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars]
    return {t: i for i, t in enumerate(tokens)}
