"""imagereward against its definition computed by hand in plain torch from the checkpoint's own key names (BLIP's
pre-norm ViT, BLIP's BERT with cross-attention, the MLP head, the standardisation): a check of the key mapping
onto transformers' BLIP classes as well as of the formula."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F
from transformers import BertTokenizer

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.imagereward import CHECKPOINT, MED_CONFIG

from .helpers import PROMPTS, images

transforms = pytest.importorskip("torchvision.transforms", reason="imagereward needs torchvision (cslg[scorers])")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cslg.scorers.scorer_class("imagereward").save_tiny(tmp_path_factory.mktemp("imagereward"), seed=5)


def attention(x, context, q, k, v, heads, mask=None):
    """Multi-head attention of ``x`` over ``context``; ``q``/``k``/``v``: (weight, bias); ``mask``: keys kept."""
    def split(t):
        return t.unflatten(-1, (heads, -1)).transpose(1, 2)

    qh, kh, vh = split(F.linear(x, *q)), split(F.linear(context, *k)), split(F.linear(context, *v))
    logits = qh @ kh.transpose(-1, -2) / qh.shape[-1] ** 0.5
    if mask is not None:
        logits = logits.masked_fill(~mask[:, None, None, :].bool(), float("-inf"))
    return (logits.softmax(-1) @ vh).transpose(1, 2).flatten(2)


def vit(sd, pixels, heads):
    """BLIP's ViT: patches + [CLS] + positions, pre-norm blocks (eps 1e-6), final norm; every token."""
    w = lambda name: (sd[f"{name}.weight"], sd[f"{name}.bias"])  # noqa: E731
    patch = sd["patch_embed.proj.weight"].shape[-1]
    x = F.conv2d(pixels, *w("patch_embed.proj"), stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(len(x), -1, -1), x], 1) + sd["pos_embed"]
    d = x.shape[-1]
    for i in range(1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))):
        h = F.layer_norm(x, (d,), *w(f"blocks.{i}.norm1"), eps=1e-6)
        qw, kw, vw = sd[f"blocks.{i}.attn.qkv.weight"].chunk(3)
        qb, kb, vb = sd[f"blocks.{i}.attn.qkv.bias"].chunk(3)
        x = x + F.linear(attention(h, h, (qw, qb), (kw, kb), (vw, vb), heads), *w(f"blocks.{i}.attn.proj"))
        h = F.layer_norm(x, (d,), *w(f"blocks.{i}.norm2"), eps=1e-6)
        x = x + F.linear(F.gelu(F.linear(h, *w(f"blocks.{i}.mlp.fc1"))), *w(f"blocks.{i}.mlp.fc2"))
    return F.layer_norm(x, (d,), *w("norm"), eps=1e-6)


def bert_cross(sd, med, ids, mask, image_tokens):
    """BLIP's med BERT in its multimodal mode: post-norm layers of self-attention, cross-attention, feed-forward."""
    w = lambda name: (sd[f"{name}.weight"], sd[f"{name}.bias"])  # noqa: E731
    d, eps, heads = med["hidden_size"], med["layer_norm_eps"], med["num_attention_heads"]
    x = sd["embeddings.word_embeddings.weight"][ids] + sd["embeddings.position_embeddings.weight"][: ids.shape[1]]
    x = F.layer_norm(x, (d,), *w("embeddings.LayerNorm"), eps=eps)
    for i in range(med["num_hidden_layers"]):
        for part, context, keep in (("attention", x, mask), ("crossattention", image_tokens, None)):
            p = f"encoder.layer.{i}.{part}"
            a = attention(x, context, w(f"{p}.self.query"), w(f"{p}.self.key"), w(f"{p}.self.value"), heads, keep)
            x = F.layer_norm(F.linear(a, *w(f"{p}.output.dense")) + x, (d,), *w(f"{p}.output.LayerNorm"), eps=eps)
        p = f"encoder.layer.{i}"
        f = F.linear(F.gelu(F.linear(x, *w(f"{p}.intermediate.dense"))), *w(f"{p}.output.dense"))
        x = F.layer_norm(f + x, (d,), *w(f"{p}.output.LayerNorm"), eps=eps)
    return x[:, 0]


def by_hand(folder, batch, prompts):
    state = torch.load(folder / CHECKPOINT, weights_only=True)
    med = json.loads((folder / MED_CONFIG).read_text())
    part = lambda prefix: {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}  # noqa: E731
    vision = part("blip.visual_encoder.")
    size = int((vision["pos_embed"].shape[1] - 1) ** 0.5) * vision["patch_embed.proj.weight"].shape[-1]
    preprocess = transforms.Compose([  # ImageReward's _transform
        transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC), transforms.CenterCrop(size),
        transforms.ToTensor(),
        transforms.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
    ])
    pixels = torch.stack([preprocess(i) for i in batch])
    tokens = BertTokenizer.from_pretrained(folder)(prompts, padding="max_length", truncation=True, max_length=35,
                                                   return_tensors="pt")
    with torch.no_grad():
        image_tokens = vit(vision, pixels, heads=vision["cls_token"].shape[-1] // 64)
        x = bert_cross(part("blip.text_encoder."), med, tokens.input_ids, tokens.attention_mask, image_tokens)
        head = part("mlp.layers.")
        for i in (0, 2, 4, 6, 7):
            x = F.linear(x, head[f"{i}.weight"], head[f"{i}.bias"])
    return ((x[:, 0] - 0.16717362830052426) / 1.0333394966054072).tolist()


def test_equals_blip_reward_by_hand(tiny):
    batch, prompts = images(3), PROMPTS
    scores = cslg.scorers.get("imagereward", model=tiny, device="cpu", batch_size=2).score(batch, prompts)
    expected = by_hand(tiny, batch, prompts)
    assert scores == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert max(scores) - min(scores) > 100 * 1e-5  # the images and prompts are told apart beyond the tolerance


def test_image_changes_the_score_beyond_tolerance(tiny):
    scorer = cslg.scorers.get("imagereward", model=tiny, device="cpu")
    same_prompt = [PROMPTS[0]] * 3
    scores = scorer.score(images(3, seed=7), same_prompt)
    assert scores == pytest.approx(by_hand(tiny, images(3, seed=7), same_prompt), rel=1e-4, abs=1e-5)
    assert max(scores) - min(scores) > 100 * 1e-5


def test_checkpoint_file_given_directly_and_long_prompt(tiny):
    batch, prompts = images(2), ["a very long prompt " * 10, "x"]
    scorer = cslg.scorers.get("imagereward", model=tiny / CHECKPOINT, tokenizer=tiny, device="cpu")
    scores = scorer.score(batch, prompts)
    assert scores == pytest.approx(by_hand(tiny, batch, prompts), rel=1e-4, abs=1e-5)


def test_missing_files_are_one_line_naming_the_flag(tiny, tmp_path):
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("imagereward", model=tmp_path, device="cpu")
    assert "\n" not in str(e.value) and CHECKPOINT in str(e.value) and "--imagereward-model" in str(e.value)
    shutil.copy(tiny / CHECKPOINT, tmp_path / CHECKPOINT)
    with pytest.raises(MissingModelError, match=MED_CONFIG):
        cslg.scorers.get("imagereward", model=tmp_path, device="cpu")
    shutil.copy(tiny / MED_CONFIG, tmp_path / MED_CONFIG)
    with pytest.raises(MissingModelError) as e:  # no tokenizer in the folder, and the named one is absent
        cslg.scorers.get("imagereward", model=tmp_path, tokenizer=tmp_path / "no-bert", device="cpu")
    assert "\n" not in str(e.value) and "no-bert" in str(e.value) and "--imagereward-model" in str(e.value)


def test_foreign_checkpoint_is_refused(tiny, tmp_path):
    shutil.copy(tiny / MED_CONFIG, tmp_path / MED_CONFIG)
    torch.save({"blip.visual_encoder.cls_token": torch.zeros(1, 1, 8)}, tmp_path / CHECKPOINT)
    with pytest.raises(MissingModelError, match="not an ImageReward checkpoint"):
        cslg.scorers.get("imagereward", model=tmp_path, device="cpu")
