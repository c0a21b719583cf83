"""The ``clip`` scorer on a tiny random CLIPModel: a hand computation from the model's own features, torchmetrics'
CLIP score on the same weights, loading from a save_pretrained folder, and the missing-model line."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import cslg.scorers
from cslg.scorers import MissingModelError
from cslg.scorers.clip import CLIPScore, features

PROMPTS = ["a red book and a gold clock", "hello", "a hand holding a cup", "x " * 200]  # the last: over 77 tokens


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    folder = CLIPScore.save_tiny(tmp_path_factory.mktemp("clip"))
    return folder, CLIPScore(model=folder, device="cpu")


def noise_images(n: int, size=(40, 48)) -> list[Image.Image]:
    return [Image.fromarray(np.random.default_rng(i).integers(0, 256, (*size, 3), dtype=np.uint8)) for i in range(n)]


def hand_cosines(scorer: CLIPScore, images, prompts) -> np.ndarray:
    """cos(E_image, E_text) written out: the model's projected features, each divided by its L2 norm, dotted."""
    pixels = scorer.processor(images=images, return_tensors="pt").pixel_values
    tokens = scorer.processor.tokenizer(prompts, padding=True, truncation=True, max_length=77, return_tensors="pt")
    with torch.no_grad():
        e_image = features(scorer.net.get_image_features(pixel_values=pixels)).double().numpy()
        e_text = features(scorer.net.get_text_features(input_ids=tokens.input_ids,
                                                       attention_mask=tokens.attention_mask)).double().numpy()
    e_image /= np.sqrt((e_image ** 2).sum(-1, keepdims=True))
    e_text /= np.sqrt((e_text ** 2).sum(-1, keepdims=True))
    return (e_image * e_text).sum(-1)


def test_equals_the_hand_computation_including_the_clamp(tiny_clip):
    _, scorer = tiny_clip
    images = noise_images(8)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(8)]
    cosines = hand_cosines(scorer, images, prompts)
    assert (cosines < 0).any() and (cosines > 0).any()  # both sides of the max(., 0) are exercised
    np.testing.assert_allclose(scorer.score(images, prompts), 100 * np.maximum(cosines, 0), rtol=1e-4, atol=1e-4)


def test_batches_do_not_change_scores(tiny_clip):
    folder, scorer = tiny_clip
    images, prompts = noise_images(5), [PROMPTS[i % len(PROMPTS)] for i in range(5)]
    one_by_one = CLIPScore(model=folder, device="cpu", batch_size=1).score(images, prompts)
    np.testing.assert_allclose(scorer.score(images, prompts), one_by_one, rtol=1e-4, atol=1e-4)


class TensorFeatures(torch.nn.Module):
    """The same CLIPModel with transformers 4's return type (a tensor from get_*_features), which torchmetrics 1.9
    expects; transformers 5 returns the projected features as ``pooler_output``."""

    def __init__(self, net):
        super().__init__()
        self.net, self.config = net, net.config

    def get_image_features(self, *args, **kwargs):
        return features(self.net.get_image_features(*args, **kwargs))

    def get_text_features(self, *args, **kwargs):
        return features(self.net.get_text_features(*args, **kwargs))


def test_equals_torchmetrics_clip_score_on_the_same_model(tiny_clip):
    clip_score = pytest.importorskip("torchmetrics.functional.multimodal").clip_score
    _, scorer = tiny_clip
    images = noise_images(6)
    prompts = [PROMPTS[i % 3] for i in range(6)]
    ours = scorer.score(images, prompts)
    with torch.no_grad():
        theirs = [float(clip_score(torch.from_numpy(np.array(image)).permute(2, 0, 1), prompt,
                                   lambda: (TensorFeatures(scorer.net), scorer.processor)))
                  for image, prompt in zip(images, prompts)]
    assert min(ours) == 0 and max(ours) > 0
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


def test_registry_and_package_attribute(tiny_clip):
    folder, scorer = tiny_clip
    assert cslg.scorers.scorer_class("clip") is CLIPScore is cslg.scorers.CLIPScore
    again = cslg.scorers.get("clip", model=str(folder), device="cpu")
    image = noise_images(1)
    assert again.score(image, ["a cup"]) == pytest.approx(scorer.score(image, ["a cup"]), abs=1e-5)
    assert again.column_names == ("clip",)


def test_missing_model_is_one_line_naming_model_and_flag(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(MissingModelError) as caught:
        CLIPScore(model=tmp_path / "empty", device="cpu")
    message = str(caught.value)
    assert "\n" not in message and str(tmp_path / "empty") in message and "--clip-model" in message


def test_incomplete_folder_is_a_missing_model(tmp_path, tiny_clip):
    folder, _ = tiny_clip
    (tmp_path / "config.json").write_text((folder / "config.json").read_text())  # no weights, no processor
    with pytest.raises(MissingModelError, match="not a complete save_pretrained copy.*--clip-model"):
        CLIPScore(model=tmp_path, device="cpu")


def test_needs_one_prompt_per_image(tiny_clip):
    _, scorer = tiny_clip
    with pytest.raises(ValueError, match="clip: needs one prompt per image"):
        scorer.score(noise_images(1))
