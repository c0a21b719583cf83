"""pickscore against its definition by hand: logit_scale.exp() * cos(get_image_features, get_text_features)."""

from __future__ import annotations

import shutil

import pytest
import torch
from transformers import CLIPModel, CLIPProcessor

import cslg.scorers
from cslg.scorers import MissingModelError

from .helpers import PROMPTS, images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cslg.scorers.scorer_class("pickscore").save_tiny(tmp_path_factory.mktemp("pickscore"), seed=2)


def by_hand(folder, batch, prompts):
    model = CLIPModel.from_pretrained(folder).eval()
    processor = CLIPProcessor.from_pretrained(folder)
    pixels = processor(images=batch, return_tensors="pt").pixel_values
    text = processor(text=prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        image = model.get_image_features(pixel_values=pixels).pooler_output
        words = model.get_text_features(input_ids=text.input_ids, attention_mask=text.attention_mask).pooler_output
    image = image / torch.linalg.vector_norm(image, dim=-1, keepdim=True)
    words = words / torch.linalg.vector_norm(words, dim=-1, keepdim=True)
    assert model.logit_scale.exp().item() > 2  # the scale matters in this check
    return (model.logit_scale.exp() * (image * words).sum(-1)).tolist()


def test_equals_scaled_cosine_of_image_and_its_prompt(tiny):
    batch, prompts = images(3), PROMPTS[::-1]
    scores = cslg.scorers.get("pickscore", model=tiny, device="cpu", batch_size=2).score(batch, prompts)
    assert scores == pytest.approx(by_hand(tiny, batch, prompts), rel=1e-5, abs=1e-6)
    assert len(set(scores)) == len(scores)


def test_long_prompt_is_truncated_to_77_tokens(tiny):
    batch, prompts = images(2), ["a " * 200, "short"]
    scores = cslg.scorers.get("pickscore", model=tiny, device="cpu").score(batch, prompts)
    assert scores == pytest.approx(by_hand(tiny, batch, prompts), rel=1e-5, abs=1e-6)


def test_processor_given_apart(tiny, tmp_path):
    weights = tmp_path / "weights"
    weights.mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(tiny / f, weights / f)
    batch = images(2)
    scores = cslg.scorers.get("pickscore", model=weights, processor=tiny, device="cpu").score(batch, PROMPTS[:2])
    assert scores == pytest.approx(by_hand(tiny, batch, PROMPTS[:2]), rel=1e-5, abs=1e-6)
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("pickscore", model=weights, processor=tmp_path / "no-processor", device="cpu")
    assert "\n" not in str(e.value) and "no-processor" in str(e.value) and "--pickscore-model" in str(e.value)


def test_missing_model_is_one_line_naming_model_and_flag(tmp_path):
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("pickscore", model=tmp_path / "absent", device="cpu")
    assert "\n" not in str(e.value) and "absent" in str(e.value) and "--pickscore-model" in str(e.value)


def test_needs_prompts(tiny):
    with pytest.raises(ValueError, match="prompt"):
        cslg.scorers.get("pickscore", model=tiny, device="cpu").score(images(1))
