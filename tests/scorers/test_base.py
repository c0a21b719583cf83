"""The scorer interface: RGB conversion of every image mode, argument checks naming the scorer, batching, several
columns, the missing-model line, the registry."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cslg.scorers
from cslg.scorers import MissingModelError, Scorer, SetScorer
from cslg.scorers.base import rgb


class MeanRed(Scorer):
    """Mean red value of the RGB image / 255, and the prompt's length: a scorer whose values are known."""

    name = "mean-red"
    default_model = "none"
    columns = ("mean-red", "mean-red.prompt_chars")

    def load(self):
        self.batches = []

    def score_batch(self, images, prompts):
        self.batches.append(len(images))
        return [{"mean-red": float(np.asarray(i)[..., 0].mean()) / 255, "mean-red.prompt_chars": float(len(p))}
                for i, p in zip(images, prompts)]


class Plain(Scorer):
    name, default_model, needs_prompts = "plain", "none", False

    def load(self):
        pass

    def score_batch(self, images, prompts):
        return [float(i.size[0]) for i in images]


# --------------------------------------------------------------------------- rgb


def test_rgb_of_greyscale_and_palette():
    grey = Image.fromarray(np.full((4, 4), 77, np.uint8), "L")
    assert rgb(grey).mode == "RGB" and np.asarray(rgb(grey))[0, 0].tolist() == [77, 77, 77]
    palette = Image.new("P", (4, 4))
    palette.putpalette([10, 20, 30] + [0] * 765)
    assert np.asarray(rgb(palette))[0, 0].tolist() == [10, 20, 30]


def test_rgb_composites_alpha_on_white():
    rgba = Image.new("RGBA", (2, 2), (200, 0, 0, 0))  # fully transparent: white
    rgba.putpixel((0, 0), (200, 0, 0, 255))  # opaque: its colour
    rgba.putpixel((1, 0), (0, 0, 0, 128))  # half black: mid grey
    out = np.asarray(rgb(rgba))
    assert out[0, 0].tolist() == [200, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    assert abs(int(out[0, 1, 0]) - 127) <= 1
    la = Image.fromarray(np.stack([np.zeros((2, 2), np.uint8), np.full((2, 2), 0, np.uint8)], -1), "LA")
    assert np.asarray(rgb(la))[0, 0].tolist() == [255, 255, 255]
    transparent_palette = Image.new("P", (2, 2), 1)
    transparent_palette.putpalette([0, 0, 0, 9, 9, 9] + [0] * 762)
    transparent_palette.info["transparency"] = 1
    assert np.asarray(rgb(transparent_palette))[0, 0].tolist() == [255, 255, 255]


def test_rgb_scales_16_bit_images():
    values = np.array([[0, 65535], [32768, 200]], np.uint16)
    sixteen = Image.fromarray(values)
    assert sixteen.mode == "I;16"
    out = np.asarray(rgb(sixteen))[..., 0]
    assert out.tolist() == [[0, 255], [128, 1]]
    dark = Image.fromarray(np.full((2, 2), 200, np.uint16))  # a dark 16-bit image stays dark
    assert np.asarray(rgb(dark))[0, 0].tolist() == [1, 1, 1]
    wide = Image.fromarray(np.array([[0, 255], [128, 10]], np.int32))  # 8-bit data in a 32-bit mode
    assert np.asarray(rgb(wide))[..., 0].tolist() == [[0, 255], [128, 10]]


def test_rgb_keeps_an_rgb_image():
    image = Image.new("RGB", (3, 3), (1, 2, 3))
    assert rgb(image) is image


# --------------------------------------------------------------------------- Scorer


def test_batches_and_columns():
    scorer = MeanRed(batch_size=2, device="cpu")
    images = [Image.new("RGB", (4, 4), (r, 0, 0)) for r in (0, 51, 102, 255, 255)]
    details = scorer.details(images, ["a", "bb", "ccc", "", "e"])
    assert scorer.batches == [2, 2, 1]
    assert [d["mean-red"] for d in details] == pytest.approx([0, 0.2, 0.4, 1, 1])
    assert [d["mean-red.prompt_chars"] for d in details] == [1, 2, 3, 0, 1]
    assert scorer.score(images[:2], ["a", "b"]) == pytest.approx([0, 0.2])


def test_images_are_converted_before_score_batch():
    scorer = MeanRed(device="cpu")
    rgba = Image.new("RGBA", (4, 4), (0, 0, 0, 0))  # transparent: white, red 255
    assert scorer.score([rgba], ["p"]) == [1.0]


def test_float_results_fill_the_name_column():
    scorer = Plain(device="cpu")
    assert scorer.details([Image.new("RGB", (7, 3))]) == [{"plain": 7.0}]


@pytest.mark.parametrize("images, prompts, error, match", [
    (Image.new("RGB", (2, 2)), ["p"], TypeError, "mean-red: images must be a list of PIL images"),
    ([np.zeros((2, 2, 3))], ["p"], TypeError, "mean-red: images must be PIL images, got ndarray"),
    ([Image.new("RGB", (2, 2))], "p", TypeError, "mean-red: prompts must be a list of strings"),
    ([Image.new("RGB", (2, 2))], [3], TypeError, "mean-red: prompts must be a list of strings"),
    ([Image.new("RGB", (2, 2))] * 2, ["p"], ValueError, "mean-red: 2 images but 1 prompts"),
    ([Image.new("RGB", (2, 2))], None, ValueError, "mean-red: needs one prompt per image"),
])
def test_bad_arguments_name_the_scorer(images, prompts, error, match):
    with pytest.raises(error, match=match):
        MeanRed(device="cpu").score(images, prompts)


@pytest.mark.parametrize("kwargs, error, match", [
    (dict(model=3), TypeError, "mean-red: model must be a Hub id or a local path, not int"),
    (dict(batch_size=0), ValueError, "mean-red: batch_size must be a positive integer, not 0"),
    (dict(batch_size=True), ValueError, "batch_size must be a positive integer"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        MeanRed(device="cpu", **kwargs)


def test_missing_model_lines(tmp_path):
    scorer = MeanRed(device="cpu", model="org/absent")
    hub = scorer.missing(OSError("404 Client Error\nmore details on a second line"))
    assert isinstance(hub, MissingModelError) and "\n" not in str(hub)
    assert "'org/absent'" in str(hub) and "hf download org/absent" in str(hub) and "--mean-red-model PATH" in str(hub)
    local = MeanRed(device="cpu", model=tmp_path).missing("no config.json")
    assert "not a complete save_pretrained copy" in str(local) and "no config.json" in str(local)

    def absent(model):
        raise OSError(f"{model} is not a local folder")

    with pytest.raises(MissingModelError, match="org/absent is not a local folder"):
        scorer.load_pretrained(absent)


def test_set_scorer_refuses_per_image_scoring():
    class Distance(SetScorer):
        name, default_model = "distance", "none"

        def load(self):
            pass

    with pytest.raises(TypeError, match="distance is a set-level measure: use score_set"):
        Distance(device="cpu").score([Image.new("RGB", (2, 2))])


def test_unknown_scorer_lists_the_registered_ones():
    with pytest.raises(ValueError, match="unknown scorer 'nope'; choose from .*clip"):
        cslg.scorers.get("nope")
    with pytest.raises(AttributeError):
        cslg.scorers.NoSuchScorer
