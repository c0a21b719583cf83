"""The denoising loop equals diffusers' own pipelines on the tiny models (no guidance, CFG, true CFG)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cslg.families import adapter_for
from cslg.methods import CFG, NoGuidance, Request
from cslg.guidance.sampling import sample

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 7
STEPS = 5
TOL = 1 / 255


def _ref(pipe, **kw):
    return pipe(PROMPT, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(pipe, method, guidance=3.5):
    return sample(adapter_for(pipe, guidance), method, Request(PROMPT, NEG), SEED, STEPS, H, W, MSL, output_type="np")


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd35"])
def test_sd3_cfg_equals_diffusers(name):
    pipe = tiny(name)
    ref, ours = _ref(pipe, negative_prompt=NEG, guidance_scale=6.0), _ours(pipe, CFG(6.0))
    assert np.abs(ref - ours).max() <= TOL


def test_sd3_none_equals_guidance_one(sd3_pipe):
    assert np.abs(_ref(sd3_pipe, guidance_scale=1.0) - _ours(sd3_pipe, NoGuidance())).max() <= TOL


def test_flux_none_equals_diffusers(flux_pipe):
    ref, ours = _ref(flux_pipe, guidance_scale=2.0), _ours(flux_pipe, NoGuidance(), guidance=2.0)
    assert np.abs(ref - ours).max() <= TOL


def test_flux_true_cfg_equals_diffusers(flux_pipe):
    ref = _ref(flux_pipe, guidance_scale=3.5, true_cfg_scale=4.0, negative_prompt=NEG)
    assert np.abs(ref - _ours(flux_pipe, CFG(4.0))).max() <= TOL
