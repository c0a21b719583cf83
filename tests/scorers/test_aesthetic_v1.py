"""aesthetic-v1 against its definition computed by hand with transformers' own CLIP vision class."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPImageProcessor, CLIPVisionModelWithProjection

import cslg.scorers
from cslg.scorers import MissingModelError

from .helpers import images


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return cslg.scorers.scorer_class("aesthetic-v1").save_tiny(tmp_path_factory.mktemp("aesthetic-v1"), seed=3)


def test_equals_linear_head_on_normalised_image_embeds(tiny):
    batch = images(5)
    scores = cslg.scorers.get("aesthetic-v1", model=tiny, device="cpu", batch_size=2).score(batch)

    clip = CLIPVisionModelWithProjection.from_pretrained(tiny).eval()  # the checkpoint's extra keys are ignored
    head = load_file(str(tiny / "model.safetensors"))
    pixels = CLIPImageProcessor.from_pretrained(tiny)(images=batch, return_tensors="pt").pixel_values
    with torch.no_grad():
        e = clip(pixel_values=pixels).image_embeds
    e = e / torch.linalg.vector_norm(e, dim=-1, keepdim=True)
    expected = e @ head["predictor.weight"][0] + head["predictor.bias"][0]
    assert scores == pytest.approx(expected.tolist(), rel=1e-5, abs=1e-6)
    assert len(set(scores)) == len(scores)  # the images are told apart


def test_prompts_are_optional_and_batches_agree(tiny):
    scorer = cslg.scorers.get("aesthetic-v1", model=tiny, device="cpu", batch_size=1)
    batch = images(3)
    assert scorer.score(batch) == pytest.approx(scorer.score(batch, ["x", "y", "z"]))
    whole = cslg.scorers.get("aesthetic-v1", model=tiny, device="cpu", batch_size=8).score(batch)
    assert whole == pytest.approx(scorer.score(batch), rel=1e-5, abs=1e-6)


def test_missing_model_is_one_line_naming_model_and_flag(tmp_path):
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get("aesthetic-v1", model=tmp_path / "absent", device="cpu")
    message = str(e.value)
    assert "\n" not in message and "absent" in message and "--aesthetic-v1-model" in message


def test_plain_clip_checkpoint_without_head_is_refused(tmp_path):
    from cslg.scorers.aesthetic_v1 import tiny_image_processor, tiny_vision_config

    CLIPVisionModelWithProjection(tiny_vision_config()).save_pretrained(tmp_path)
    tiny_image_processor().save_pretrained(tmp_path)
    with pytest.raises(MissingModelError, match="predictor"):
        cslg.scorers.get("aesthetic-v1", model=tmp_path, device="cpu")


def test_equals_the_aesthetics_predictor_package(tiny):
    """The checkpoint's own class (simple-aesthetics-predictor pins transformers<5, so it is not installed here;
    put its unpacked wheel on PYTHONPATH to run this)."""
    package = pytest.importorskip("aesthetics_predictor", reason="simple-aesthetics-predictor is not importable")
    batch = images(4)
    reference = package.AestheticsPredictorV1.from_pretrained(tiny).eval()
    pixels = CLIPImageProcessor.from_pretrained(tiny)(images=batch, return_tensors="pt").pixel_values
    with torch.no_grad():
        expected = reference(pixel_values=pixels).logits[:, 0].tolist()
    scores = cslg.scorers.get("aesthetic-v1", model=tiny, device="cpu").score(batch)
    assert scores == pytest.approx(expected, rel=1e-6, abs=1e-7)
