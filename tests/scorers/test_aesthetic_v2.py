"""aesthetic-v2 against its definition computed by hand: CLIP image_embeds, normalised, through the released MLP."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.aesthetic_v2 import HEAD_FILE

from .helpers import images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cslg.scorers.scorer_class("aesthetic-v2").save_tiny(tmp_path_factory.mktemp("aesthetic-v2"), seed=1)


def by_hand(folder, head_file, batch):
    clip = CLIPVisionModelWithProjection.from_pretrained(folder).eval()
    pixels = CLIPImageProcessor.from_pretrained(folder)(images=batch, return_tensors="pt").pixel_values
    with torch.no_grad():
        x = clip(pixel_values=pixels).image_embeds
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    state = torch.load(head_file, weights_only=True)
    for i in (0, 2, 4, 6, 7):  # no activations between the layers (the linearMSE head)
        x = x @ state[f"layers.{i}.weight"].T + state[f"layers.{i}.bias"]
    return x[:, 0].tolist()


def test_equals_mlp_on_normalised_image_embeds(tiny):
    batch = images(4)
    scores = cslg.scorers.get("aesthetic-v2", model=tiny, device="cpu", batch_size=3).score(batch)
    assert scores == pytest.approx(by_hand(tiny, tiny / HEAD_FILE, batch), rel=1e-5, abs=1e-7)
    assert len(set(scores)) == len(scores)


def test_head_file_and_clip_model_given_apart(tiny, tmp_path):
    head = shutil.copy(tiny / HEAD_FILE, tmp_path / "head.pth")
    batch = images(2)
    scores = cslg.scorers.get("aesthetic-v2", model=head, clip_model=tiny, device="cpu").score(batch)
    assert scores == pytest.approx(by_hand(tiny, head, batch), rel=1e-5, abs=1e-7)


def test_missing_head_or_clip_is_one_line_naming_the_flag(tiny, tmp_path):
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("aesthetic-v2", model=tmp_path, device="cpu")  # a folder without the head file
    assert "\n" not in str(e.value) and HEAD_FILE in str(e.value) and "--aesthetic-v2-model" in str(e.value)
    head = shutil.copy(tiny / HEAD_FILE, tmp_path / HEAD_FILE)
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("aesthetic-v2", model=head, clip_model=tmp_path / "no-clip", device="cpu")
    assert "\n" not in str(e.value) and "no-clip" in str(e.value) and "--aesthetic-v2-model" in str(e.value)


def test_foreign_head_file_is_refused(tmp_path):
    torch.save({"weight": torch.zeros(1, 16)}, tmp_path / HEAD_FILE)
    with pytest.raises(MissingModelError, match="linearMSE"):
        cslg.scorers.get("aesthetic-v2", model=tmp_path, device="cpu")


def test_equals_the_aesthetics_predictor_package(tiny):
    """simple-aesthetics-predictor's AestheticsPredictorV2Linear with the same CLIP and head (the package pins
    transformers<5, so it is not installed here; put its unpacked wheel on PYTHONPATH to run this)."""
    package = pytest.importorskip("aesthetics_predictor", reason="simple-aesthetics-predictor is not importable")
    batch = images(4)
    reference = package.AestheticsPredictorV2Linear.from_pretrained(tiny).eval()
    head = torch.load(tiny / HEAD_FILE, weights_only=True)
    reference.layers.load_state_dict({k.removeprefix("layers."): v for k, v in head.items()})
    pixels = CLIPImageProcessor.from_pretrained(tiny)(images=batch, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits[:, 0].tolist()
    scores = cslg.scorers.get("aesthetic-v2", model=tiny, device="cpu").score(batch)
    assert scores == pytest.approx(expected, rel=1e-6, abs=1e-7)
