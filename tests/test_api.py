"""The public Python API: names, generate, find_layers."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import cslg
from cslg.families import adapter_for
from cslg.methods import Method
from cslg.guidance.sampling import sample

from .helpers import ROOT, tiny

SMALL = dict(steps=2, height=32, width=32, max_sequence_length=32)
PROMPT = "a sign that says 'OPEN'"


def test_public_names():
    for name in ("generate", "CSLG", "CFG", "NoGuidance", "SCFG", "ConceptDiffusion", "layer_names", "find_layers",
                 "LayerError"):
        assert hasattr(cslg, name), name
        assert name in cslg.__all__, name
    assert all(issubclass(getattr(cslg, name), Method) for name in ("CSLG", "CFG", "NoGuidance", "SCFG", "ConceptDiffusion"))
    assert issubclass(cslg.LayerError, ValueError)
    from cslg.families import LayerError as from_families
    from cslg.families.base import LayerError as from_base
    assert cslg.LayerError is from_families is from_base
    assert callable(cslg.generate) and callable(cslg.find_layers) and callable(cslg.layer_names)


@pytest.mark.parametrize("name,layers,valid", [
    ("tiny-sd3", [99], r"valid layers are 0-5$"),
    ("tiny-sd3", ["S3"], r"valid layers are 0-5$"),
    ("tiny-flux", [99], r"valid layers are 0-5 \(double-stream blocks\) and s0-s5 \(single-stream blocks\)"),
    ("tiny-flux", ["s99"], r"valid layers are 0-5 \(double-stream blocks\) and s0-s5 \(single-stream blocks\)"),
])
def test_generate_rejects_unknown_layers(name, layers, valid):
    canonical = str(layers[0]).lower()  # the message names the layer as the method holds it
    with pytest.raises(cslg.LayerError, match=rf"unknown layer '{canonical}': {valid}"):
        cslg.generate(tiny(name), PROMPT, cslg.CSLG(layers=layers, scale=1.0), **SMALL).images[0]


def test_generate_accepts_valid_upper_case_names(flux_pipe):
    """``"S3"`` is FLUX's single-stream block s3 (names are case-insensitive)."""
    image = cslg.generate(flux_pipe, PROMPT, cslg.CSLG(layers=["S3"], scale=1.0), output_type="np", **SMALL).images[0]
    assert image.shape == (32, 32, 3) and np.isfinite(image).all()


def test_generate_cfg_equals_sample_and_diffusers(sd3_pipe):
    seed, neg = 3, "blurry"
    ours = cslg.generate(sd3_pipe, PROMPT, cslg.CFG(4.0), seed=seed, negative_prompt=neg, output_type="np", **SMALL).images[0]
    direct = sample(adapter_for(sd3_pipe), cslg.CFG(4.0), cslg.Request(PROMPT, neg), seed, 2, 32, 32, 32, "np")
    ref = sd3_pipe(PROMPT, negative_prompt=neg, num_inference_steps=2, height=32, width=32, max_sequence_length=32,
                   guidance_scale=4.0, output_type="np", generator=torch.Generator("cpu").manual_seed(seed)).images[0]
    assert ours.shape == ref.shape == (32, 32, 3)
    assert np.array_equal(ours, direct)
    assert np.abs(ours - ref).max() <= 1 / 255
    other = cslg.generate(sd3_pipe, PROMPT, cslg.CFG(4.0), seed=seed + 1, negative_prompt=neg, output_type="np", **SMALL).images[0]
    assert np.abs(other - ref).max() > 1 / 255, "another seed gave the same image: the test could not fail"


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_generate_latent_output_is_not_decoded(name):
    """``output_type="latent"`` gives the final latents, as diffusers' pipelines return them."""
    pipe = tiny(name)
    method, kw = (cslg.CFG(4.0), dict(guidance_scale=4.0)) if name == "tiny-sd3" else (cslg.NoGuidance(), {})
    ours = cslg.generate(pipe, PROMPT, method, seed=2, output_type="latent", **SMALL).images[0]
    ref = pipe(PROMPT, num_inference_steps=2, height=32, width=32, max_sequence_length=32, output_type="latent",
               generator=torch.Generator("cpu").manual_seed(2), **kw).images[0]
    assert ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-4)


def test_generate_returns_a_pil_image_by_default(sd3_pipe):
    image = cslg.generate(sd3_pipe, PROMPT, cslg.NoGuidance(), progress=False, **SMALL).images[0]
    assert image.size == (32, 32)


def test_find_layers(sd3_pipe, tmp_path):
    pairs = [("a dog", "a dog with a tag that says 'buddy'")]
    result = cslg.find_layers(sd3_pipe, pairs, top_k=2, **SMALL)
    names = cslg.layer_names(sd3_pipe)
    assert isinstance(result, dict)
    assert len(result["suggested"]) == 2 and set(result["suggested"]) <= set(names)
    ranking = [row["layer"] for row in result["ranking"]]
    assert sorted(ranking, key=names.index) == names  # every layer exactly once
    assert result["suggested"] == ranking[:2]
    scores = [row["score"] for row in result["ranking"]]
    assert scores == sorted(scores) and all(np.isfinite(scores))
    assert result["family"] == "sd3" and result["pairs"] == 1 and result["top_k"] == 2
    assert not {"path", "figures", "captures"} & set(result)  # no paths into the deleted temporary folder

    kept = cslg.find_layers(sd3_pipe, pairs, top_k=2, out=tmp_path, **SMALL)
    assert kept["suggested"] == result["suggested"] and kept["ranking"] == result["ranking"]
    assert kept["path"] == str(tmp_path / "layers.json") and all(Path(f).is_file() for f in kept["figures"])
    assert json.loads((tmp_path / "layers.json").read_text())["suggested"] == result["suggested"]
    assert (tmp_path / "capture.safetensors").is_file() and len(list(tmp_path.glob("*.png"))) == 2


def test_callback_runs_once_per_step_and_can_change_the_latents(sd3_pipe):
    run = dict(seed=1, steps=3, height=32, width=32, max_sequence_length=32, output_type="latent", progress=False)
    method = cslg.CFG(4.0)
    plain = cslg.generate(sd3_pipe, PROMPT, method, **run).images[0]
    seen = []
    same = cslg.generate(sd3_pipe, PROMPT, method, callback=lambda i, t, x: seen.append((i, float(t), x.shape)), **run).images[0]
    assert [i for i, _, _ in seen] == [0, 1, 2] and len({t for _, t, _ in seen}) == 3
    assert torch.equal(same, plain)  # returning None continues from the scheduler's latents
    assert torch.equal(cslg.generate(sd3_pipe, PROMPT, method, callback=lambda i, t, x: x, **run).images[0], plain)
    halved = cslg.generate(sd3_pipe, PROMPT, method, callback=lambda i, t, x: x * 0.5 if i == 0 else None, **run).images[0]
    assert (halved - plain).abs().max() > 1e-3


def test_find_layers_leaves_a_users_matplotlib_backend_alone(tmp_path):
    code = ("import matplotlib; matplotlib.use('svg'); import cslg\n"
            "from cslg.models import load_pipeline\n"
            "pipe = load_pipeline('tiny-sd3', device='cpu')\n"
            "cslg.find_layers(pipe, [('a mug', \"a mug that says 'HI'\")], steps=2, height=32, width=32, "
            f"max_sequence_length=32, top_k=1, out={str(tmp_path)!r})\n"
            "assert matplotlib.get_backend() == 'svg', matplotlib.get_backend()\n")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(list(tmp_path.glob("*.png"))) == 2  # the figures were still written


def test_batches_equal_diffusers_batched_calls_and_one_image_at_a_time(sd3_pipe):
    prompts, neg = ["a sign that says 'OPEN'", "a red mug"], "blurry"
    kw = dict(negative_prompt=neg, output_type="np", steps=2, height=32, width=32, max_sequence_length=32)
    out = cslg.generate(sd3_pipe, prompts, cslg.CFG(4.0), seed=[5, 9], num_images_per_prompt=1, **kw)
    assert out.images.shape == (2, 32, 32, 3) and out.seeds == [5, 9]
    ref = sd3_pipe(prompts, negative_prompt=[neg, neg], num_inference_steps=2, height=32, width=32,
                   max_sequence_length=32, guidance_scale=4.0, output_type="np",
                   generator=[torch.Generator("cpu").manual_seed(s) for s in (5, 9)]).images
    assert np.abs(out.images - ref).max() <= 1 / 255
    for image, prompt, seed in zip(out.images, prompts, (5, 9)):  # each image is its prompt's and seed's
        alone = cslg.generate(sd3_pipe, prompt, cslg.CFG(4.0), seed=seed, **kw).images[0]
        assert np.abs(image - alone).max() < 1e-4
    assert np.abs(out.images[0] - out.images[1]).max() > 1 / 255
    copies = cslg.generate(sd3_pipe, tuple(prompts), cslg.CFG(4.0), seed=5, num_images_per_prompt=2, **kw)
    assert copies.images.shape[0] == 4 and copies.seeds == [5, 6, 7, 8]
    assert np.abs(copies.images[0] - out.images[0]).max() < 1e-4  # prompt 0, seed 5 again
    g = torch.Generator("cpu").manual_seed(3)
    drawn = cslg.generate(sd3_pipe, prompts, cslg.CFG(4.0), generator=g, **kw)
    g = torch.Generator("cpu").manual_seed(3)
    ref = sd3_pipe(prompts, negative_prompt=[neg, neg], num_inference_steps=2, height=32, width=32,
                   max_sequence_length=32, guidance_scale=4.0, output_type="np", generator=g).images
    assert drawn.seeds == [None, None] and np.abs(drawn.images - ref).max() <= 1 / 255
    noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    given = cslg.generate(sd3_pipe, prompts, cslg.CFG(4.0), latents=noise, return_dict=False, **kw)[0]
    ref = sd3_pipe(prompts, negative_prompt=[neg, neg], num_inference_steps=2, height=32, width=32,
                   max_sequence_length=32, guidance_scale=4.0, output_type="np", latents=noise).images
    assert np.abs(given - ref).max() <= 1 / 255


def test_batched_methods_with_attention_and_memory_equal_single_images(sd3_pipe):
    """S-CFG records attention per image and APG keeps a momentum per image: batched, each image is its own."""
    kw = dict(output_type="latent", steps=3, height=32, width=32, max_sequence_length=32, progress=False)
    for method in (cslg.SCFG(4.0), cslg.APG(4.0), cslg.ConceptDiffusion(4.0, 3.0), cslg.PAG(["1"], 2.0, 4.0)):
        both = cslg.generate(sd3_pipe, ["a red book and a gold clock", "a mug"], method, seed=[1, 2], **kw).images
        for j, (prompt, seed) in enumerate((("a red book and a gold clock", 1), ("a mug", 2))):
            alone = cslg.generate(sd3_pipe, prompt, method, seed=seed, **kw).images[0]
            assert (both[j] - alone).abs().max() < 1e-4, method.name


@pytest.mark.parametrize("call,error,message", [
    (lambda p: cslg.generate(p, None, cslg.CFG(4.0)), TypeError, "^prompt: expected a string"),
    (lambda p: cslg.generate(p, [], cslg.CFG(4.0)), TypeError, "^prompt: expected a string or a non-empty list"),
    (lambda p: cslg.generate(p, ["a", 3], cslg.CFG(4.0)), TypeError, "^prompt: entry 1 is not a string"),
    (lambda p: cslg.generate(p, "a", "cfg"), TypeError, "^method: expected a guidance method"),
    (lambda p: cslg.generate(p, "a", cslg.CFG), TypeError, "^method: expected a guidance method"),
    (lambda p: cslg.generate(p, "a", cslg.ConceptDiffusion(), concepts="cat"), TypeError, "^concepts: expected a list"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), seed=1.5), TypeError, r"^seed: expected an integer, got 1.5"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), seed=None), TypeError, "^seed: expected an integer, got None"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), seed=2**70), ValueError, "^seed: .* is not an integer from 0"),
    (lambda p: cslg.generate(p, ["a", "b"], cslg.CFG(4.0), seed=[1]), ValueError, "^seed: 1 seeds for 2 images"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), steps=0), ValueError, "^steps: 0 is not an integer at least 1"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), steps=True), TypeError, "^steps: expected an integer"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), steps=2.5), TypeError, "^steps: expected an integer"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), height=0), ValueError, "^height: 0 is not an integer at least 1"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), max_sequence_length=0), ValueError, "^max_sequence_length: 0"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), guidance=float("nan")), ValueError, "^guidance: nan is not"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), output_type="jpeg"), ValueError, "^output_type: expected one of"),
    (lambda p: cslg.generate(p, "a", cslg.CFG(4.0), num_images_per_prompt=0), ValueError, "^num_images_per_prompt"),
    (lambda p: cslg.generate(p, ["a", "b"], cslg.CFG(4.0), negative_prompt=["x", "y", "z"]), ValueError,
     "^negative_prompt: 3 negative prompts for 2 prompts"),
    (lambda p: cslg.find_layers(p, ["ab"]), TypeError, "^pairs: entry 0 is not a pair of two prompts: 'ab'"),
    (lambda p: cslg.find_layers(p, []), TypeError, "^pairs: expected a non-empty list"),
    (lambda p: cslg.find_layers(p, ("a", "b")), TypeError, "^pairs: expected a non-empty list"),
    (lambda p: cslg.find_layers(p, [("a", "b")], top_k=0), ValueError, "^top_k: 0 is not an integer at least 1"),
    (lambda p: cslg.find_layers(p, [("a", "b")], metric="ratio"), ValueError, "^metric: expected one of"),
])
def test_api_arguments_are_checked_naming_the_argument(sd3_pipe, call, error, message):
    with pytest.raises(error, match=message):
        call(sd3_pipe)
