"""FID and KID: equal to torchmetrics called directly on the same images and Inception weights; reference folders,
their feature cache, and the errors for missing weights and too few images."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("torch_fidelity", reason='FID/KID need the optional extra cslg[fid]')
torchmetrics_image = pytest.importorskip("torchmetrics.image", reason='FID/KID need the optional extra cslg[fid]')

import torch  # noqa: E402

import cslg.scorers  # noqa: E402
from cslg.scorers import MissingModelError  # noqa: E402

N = 5
# 64-d pool features keep the 2048 x 2048 matrix square roots out of the tests (same code path, same network)
W = 64


def _noise(seed: int, size: int, top: int) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, top, (size, size, 3), dtype=np.uint8)) for _ in range(N)]


def _uint8(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(i) for i in images])).permute(0, 3, 1, 2)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> str:
    return str(cslg.scorers.scorer_class("fid").save_tiny(tmp_path_factory.mktemp("inception")))


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    generated = _noise(0, 32, 256)
    reference = _noise(1, 48, 160)  # another size and distribution
    folder = tmp_path_factory.mktemp("reference")
    for i, image in enumerate(reference):
        image.save(folder / f"{i:02d}.png")
    return generated, reference, folder


@pytest.fixture(scope="module")
def torchmetrics_values(weights, sets):
    """FID and KID (every subset the whole set) by torchmetrics on the same images and weights file."""
    from torchmetrics.image.fid import NoTrainInceptionV3

    generated, reference, _ = sets
    # antialias=False: torchmetrics' copy of torch-fidelity's TensorFlow-1.x resize, as torch-fidelity does
    extractor = NoTrainInceptionV3("inception-v3-compat", [str(W)], weights, antialias=False)
    fid = torchmetrics_image.FrechetInceptionDistance(feature=extractor)
    with warnings.catch_warnings():  # torchmetrics warns that KID keeps every feature in memory
        warnings.simplefilter("ignore", UserWarning)
        kid = torchmetrics_image.KernelInceptionDistance(feature=extractor, subsets=3, subset_size=N)
    out = {}
    for name, metric in (("fid", fid), ("kid", kid)):
        metric.update(_uint8(reference), real=True)
        metric.update(_uint8(generated), real=False)
        value = metric.compute()
        out[name] = value[0] if isinstance(value, tuple) else value
    return {k: float(v) for k, v in out.items()}


@pytest.fixture(scope="module")
def fid(weights):
    return cslg.scorers.get("fid", model=weights, device="cpu", features=W)


def test_fid_equals_torchmetrics(fid, sets, torchmetrics_values):
    generated, reference, folder = sets
    value = fid.score_set(generated, reference)["fid"]
    assert value > 0
    assert value == pytest.approx(torchmetrics_values["fid"], rel=1e-4)
    assert fid.score_set(generated, folder)["fid"] == pytest.approx(value, rel=1e-6)  # a folder is the same set


def test_kid_equals_torchmetrics(weights, sets, torchmetrics_values):
    generated, _, folder = sets
    kid = cslg.scorers.get("kid", model=weights, device="cpu", features=W, subsets=3, subset_size=N)
    value = kid.score_set(generated, folder)
    assert value["kid"] == pytest.approx(torchmetrics_values["kid"], rel=1e-4)
    assert value["kid_std"] == pytest.approx(0.0, abs=1e-5 * abs(value["kid"]))  # each subset is the whole set
    # subsets smaller than the sets: random, reproducible from the seed
    small = cslg.scorers.get("kid", model=weights, device="cpu", features=W, subsets=4, subset_size=3)
    assert small.score_set(generated, folder) == small.score_set(generated, folder)
    assert small.score_set(generated, folder)["kid_std"] > 0


def test_reference_folder_features_follow_its_files(fid, sets, tmp_path):
    generated, reference, _ = sets
    for i, image in enumerate(reference[:3]):
        image.save(tmp_path / f"{i}.png")
    before = fid.score_set(generated, tmp_path)["fid"]
    assert fid.score_set(generated, tmp_path)["fid"] == before  # cached features, same value
    Image.new("RGB", (40, 40), (250, 10, 10)).save(tmp_path / "0.png")  # a changed image is read again
    assert fid.score_set(generated, tmp_path)["fid"] != pytest.approx(before)


def test_too_few_images(weights, fid, sets):
    generated, reference, folder = sets
    kid = cslg.scorers.get("kid", model=weights, device="cpu", features=W, subsets=2, subset_size=N + 1)
    with pytest.raises(ValueError, match=r"subset_size=6 .* holds 5 images.*--kid-subset-size") as e:
        kid.score_set(generated, folder)
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="at least 2 images"):
        fid.score_set(generated[:1], reference)
    with pytest.raises(ValueError, match="subset_size"):
        cslg.scorers.get("kid", model=weights, subset_size=1)
    with pytest.raises(ValueError, match="features must be one of"):
        cslg.scorers.get("fid", model=weights, features=100)


def test_missing_weights_and_folders(tmp_path, fid, sets):
    with pytest.raises(MissingModelError, match=r"fid: .*no_such\.pth.*--fid-model PATH") as e:
        cslg.scorers.get("fid", model=str(tmp_path / "no_such.pth"))
    assert "\n" not in str(e.value)
    broken = tmp_path / "broken.pth"
    broken.write_bytes(b"not a state dict")
    with pytest.raises(MissingModelError, match="--kid-model PATH"):
        cslg.scorers.get("kid", model=str(broken))
    with pytest.raises(ValueError, match="does not exist"):
        fid.score_set(sets[0], tmp_path / "nowhere")
    with pytest.raises(ValueError, match="holds no image"):
        fid.score_set(sets[0], tmp_path)
    with pytest.raises(TypeError, match="set-level"):
        fid.score(sets[0])
