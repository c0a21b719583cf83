"""hpsv2 against HPSv2's own scoring (img_score.py) transcribed: the model's forward, diag(image_features @
text_features.T), on the same tiny OpenCLIP weights."""

from __future__ import annotations

import pytest
import torch

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.hpsv2 import CHECKPOINT

from .helpers import PROMPTS, images

open_clip = pytest.importorskip("open_clip", reason="hpsv2 needs the optional package open_clip_torch")
transforms = pytest.importorskip("torchvision.transforms", reason="hpsv2 needs torchvision (cslg[scorers])")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cslg.scorers.scorer_class("hpsv2").save_tiny(tmp_path_factory.mktemp("hpsv2"), seed=4)


MEAN, STD = torch.tensor([0.48145466, 0.4578275, 0.40821073]), torch.tensor([0.26862954, 0.26130258, 0.27577711])


def preprocess_val(image, size=32):
    """HPSv2's evaluation transform (its open_clip fork's image_transform, is_train=False): ToTensor, the longer
    side to ``size`` (bicubic), black padding split evenly, then Normalize."""
    x = transforms.ToTensor()(image)
    h, w = x.shape[1:]
    scale = size / max(h, w)
    nh, nw = round(h * scale), round(w * scale)
    x = transforms.functional.resize(x, [nh, nw], transforms.InterpolationMode.BICUBIC)
    canvas = torch.zeros(3, size, size)
    top, left = (size - nh) // 2, (size - nw) // 2
    canvas[:, top:top + nh, left:left + nw] = x
    return (canvas - MEAN[:, None, None]) / STD[:, None, None]


def by_hand(folder, batch, prompts):
    model = open_clip.create_model(f"local-dir:{folder}", load_weights=False, output_dict=True)
    model.load_state_dict(torch.load(folder / CHECKPOINT, weights_only=True)["state_dict"])
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
    scores = []
    for image, prompt in zip(batch, prompts):  # one image at a time, as img_score.py
        with torch.no_grad():
            outputs = model(preprocess_val(image).unsqueeze(0), tokenizer([prompt]))
        logits_per_image = outputs["image_features"] @ outputs["text_features"].T
        scores.append(torch.diagonal(logits_per_image).item())
    return scores


def test_equals_hpsv2_img_score(tiny):
    batch, prompts = images(3), PROMPTS
    scores = cslg.scorers.get("hpsv2", model=tiny, device="cpu", batch_size=2).score(batch, prompts)
    assert scores == pytest.approx(by_hand(tiny, batch, prompts), rel=1e-5, abs=1e-6)
    assert len(set(scores)) == len(scores) and all(-1 <= s <= 1 for s in scores)


def test_transform_keeps_the_whole_image_padded_with_black():
    from PIL import Image

    from cslg.scorers.hpsv2 import hps_transform

    wide = Image.new("RGB", (64, 16), (255, 255, 255))  # -> 32 x 8 content, 12 rows of black above and below
    x = hps_transform(wide, 32)
    black, white = -MEAN / STD, (1 - MEAN) / STD
    assert x.shape == (3, 32, 32)
    assert torch.allclose(x[:, :12], black[:, None, None].expand(3, 12, 32), atol=1e-6)
    assert torch.allclose(x[:, 20:], black[:, None, None].expand(3, 12, 32), atol=1e-6)
    assert torch.allclose(x[:, 13:19], white[:, None, None].expand(3, 6, 32), atol=1e-3)


def test_checkpoint_file_given_directly(tiny):
    batch = images(2)
    scores = cslg.scorers.get("hpsv2", model=tiny / CHECKPOINT, device="cpu").score(batch, PROMPTS[:2])
    assert scores == pytest.approx(by_hand(tiny, batch, PROMPTS[:2]), rel=1e-5, abs=1e-6)


def test_missing_checkpoint_is_one_line_naming_model_and_flag(tmp_path):
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("hpsv2", model=tmp_path, device="cpu")
    assert "\n" not in str(e.value) and CHECKPOINT in str(e.value) and "--hpsv2-model" in str(e.value)


def test_foreign_checkpoint_is_refused_in_one_line(tiny, tmp_path):
    (tmp_path / "open_clip_config.json").write_text((tiny / "open_clip_config.json").read_text())
    torch.save({"state_dict": {"visual.proj": torch.zeros(2, 2)}}, tmp_path / CHECKPOINT)
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("hpsv2", model=tmp_path, device="cpu")
    assert "\n" not in str(e.value) and "does not load" in str(e.value)
