"""Image-to-image through ``generate(image=, strength=)`` and the family's other pipelines, against diffusers' own
img2img pipelines on the same tiny model and seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    FluxImg2ImgPipeline,
    SD3ControlNetModel,
    StableDiffusion3ControlNetPipeline,
    StableDiffusion3Img2ImgPipeline,
    StableDiffusion3InpaintPipeline,
    StableDiffusion3PAGPipeline,
)
from PIL import Image

import cslg
from cslg.families.base import pipeline_view

from .helpers import tiny

SIZE = dict(height=32, width=32)
PROMPT = "a sign that says 'OPEN'"


def start_image(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


def diffusers_img2img(cls, pipe, prompts, image, strength, seeds, steps, **kwargs):
    i2i = pipeline_view(cls, pipe)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    return i2i(prompts, image=image, strength=strength, num_inference_steps=steps, generator=generators,
               output_type="np", max_sequence_length=32, **SIZE, **kwargs).images


@pytest.mark.parametrize("strength", [0.5, 1.0])
def test_sd3_img2img_equals_diffusers(sd3_pipe, strength):
    image = start_image()
    ours = cslg.generate(sd3_pipe, PROMPT, cslg.CFG(5.0), image=image, strength=strength, seed=3, steps=4,
                         output_type="np", max_sequence_length=32, progress=False, **SIZE).images
    ref = diffusers_img2img(StableDiffusion3Img2ImgPipeline, sd3_pipe, PROMPT, image, strength, [3], 4,
                            guidance_scale=5.0)
    assert np.abs(ours - ref).max() < 1e-4
    text_to_image = cslg.generate(sd3_pipe, PROMPT, cslg.CFG(5.0), seed=3, steps=4, output_type="np",
                                  max_sequence_length=32, progress=False, **SIZE).images
    assert np.abs(ours - text_to_image).max() > 1e-2, "the start image changed nothing: the test could not fail"


def test_flux_img2img_batch_equals_diffusers(flux_pipe):
    images = [start_image(0), start_image(1)]
    prompts = [PROMPT, "a mug that says 'HELLO'"]
    ours = cslg.generate(flux_pipe, prompts, cslg.NoGuidance(), image=images, strength=0.7, seed=[5, 9], steps=4,
                         output_type="np", max_sequence_length=32, progress=False, **SIZE).images
    ref = diffusers_img2img(FluxImg2ImgPipeline, flux_pipe, prompts, images, 0.7, [5, 9], 4, guidance_scale=3.5)
    assert ours.shape == ref.shape == (2, 32, 32, 3)
    assert np.abs(ours - ref).max() < 1e-4


def test_the_familys_img2img_and_pag_pipelines_run_as_its_own(sd3_pipe):
    kwargs = dict(seed=1, steps=2, output_type="np", max_sequence_length=32, progress=False, **SIZE)
    ref = cslg.generate(sd3_pipe, PROMPT, cslg.CSLG(layers=[1], scale=2.0), **kwargs).images
    for cls in (StableDiffusion3Img2ImgPipeline, StableDiffusion3PAGPipeline):
        other = pipeline_view(cls, sd3_pipe)
        assert cslg.family_of(other) == "sd3"
        images = cslg.generate(other, PROMPT, cslg.CSLG(layers=[1], scale=2.0), **kwargs).images
        assert np.array_equal(images, ref), cls.__name__


def test_pipelines_whose_parts_cslg_would_drop_are_refused(sd3_pipe):
    inpaint = pipeline_view(StableDiffusion3InpaintPipeline, sd3_pipe)
    with pytest.raises(ValueError, match="StableDiffusion3InpaintPipeline: cslg would not apply its mask"):
        cslg.generate(inpaint, PROMPT, cslg.CFG(), steps=1, **SIZE)
    config = sd3_pipe.transformer.config
    controlnet = SD3ControlNetModel(
        sample_size=config.sample_size, patch_size=2, in_channels=config.in_channels, num_layers=1,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        joint_attention_dim=config.joint_attention_dim, caption_projection_dim=config.caption_projection_dim,
        pooled_projection_dim=config.pooled_projection_dim, out_channels=config.out_channels)
    with_controlnet = StableDiffusion3ControlNetPipeline(**sd3_pipe.components, controlnet=controlnet)
    with pytest.raises(ValueError, match="cslg would not apply its controlnet; use StableDiffusion3Pipeline"):
        cslg.generate(with_controlnet, PROMPT, cslg.CFG(), steps=1, **SIZE)


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(strength=0.5), ValueError, "strength: only used with image="),
    (dict(image=start_image(), strength=0.0), ValueError, r"strength: 0.0 is not in \(0, 1\]"),
    (dict(image=start_image(), strength=1.5), ValueError, r"strength: 1.5 is not in \(0, 1\]"),
    (dict(image=start_image(), strength=float("nan")), ValueError, "strength: nan is not a finite number"),
    (dict(image=np.zeros((32, 32, 3))), TypeError, "image: expected a PIL image"),
    (dict(image=[start_image()] * 3), ValueError, "image: 3 images for 1 prompts"),
    (dict(image=start_image(), latents=torch.zeros(1, 4, 4, 4)), ValueError, "give one of image or latents"),
])
def test_img2img_arguments_are_checked(sd3_pipe, kwargs, error, message):
    with pytest.raises(error, match=message):
        cslg.generate(sd3_pipe, PROMPT, cslg.CFG(), steps=2, progress=False, **SIZE, **kwargs)


def test_a_family_without_img2img_says_so():
    with pytest.raises(ValueError, match="image-to-image is not supported for pixart"):
        cslg.generate(tiny("tiny-pixart-sigma"), PROMPT, cslg.CFG(), image=start_image(), steps=2, **SIZE)
