"""Qwen-Image and PixArt-Σ through the whole spine, against diffusers' own pipelines and transformer forwards;
identity attention against diffusers' PAG processors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import PAGIdentitySelfAttnProcessor2_0, PAGJointAttnProcessor2_0

from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import CFG, CSLG, SCFG, ConceptDiffusion, NoGuidance, Request, Step
from cslg.guidance.sampling import prepare, sample
from cslg.guidance.skip import skip_blocks

from ..helpers import H, MSL, W, tiny
from .checks import check_capture_cosine

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 3
STEPS = 4
TOL = 1 / 255
NEW = ["tiny-qwenimage", "tiny-pixart-sigma"]


def _pipeline(name, **kw):
    pipe = tiny(name)
    extra = {"use_resolution_binning": False, "clean_caption": False} if name == "tiny-pixart-sigma" else {}
    return pipe(PROMPT, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **extra, **kw).images[0]


def _ours(name, method):
    return sample(adapter_for(tiny(name)), method, Request(PROMPT, NEG), SEED, STEPS, H, W, MSL, output_type="np")


@pytest.mark.parametrize("name", NEW)
def test_cfg_and_none_equal_the_pipeline(name):
    cfg_kw = {"true_cfg_scale": 4.0} if name == "tiny-qwenimage" else {"guidance_scale": 4.0}
    none_kw = {} if name == "tiny-qwenimage" else {"guidance_scale": 1.0}
    ref_cfg, ref_none = _pipeline(name, negative_prompt=NEG, **cfg_kw), _pipeline(name, **none_kw)
    assert np.abs(ref_cfg - _ours(name, CFG(4.0))).max() <= TOL
    assert np.abs(ref_none - _ours(name, NoGuidance())).max() <= TOL
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


def _diffusers_forward(name, pipe, run, t, row: int) -> torch.Tensor:
    """The prediction of row ``row`` from diffusers' own transformer forward, called as the pipeline calls it."""
    cond = run.cond.select([row])
    if name == "tiny-qwenimage":
        return pipe.transformer(hidden_states=run.latents, timestep=t.expand(1) / 1000, encoder_hidden_states=cond.embeds,
                                encoder_hidden_states_mask=cond.mask, img_shapes=[[run.extras["img_shape"]]],
                                return_dict=False)[0]
    out = pipe.transformer(run.latents, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                           timestep=t.expand(1), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                           return_dict=False)[0]
    return out.chunk(2, dim=1)[0]


@pytest.mark.parametrize("name", NEW)
@pytest.mark.parametrize("layers", [("1",), ("0", "2")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(name, layers):
    pipe = tiny(name)
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"uncond": NEG, "cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    method = CSLG(layers, 2.0, cfg_scale=4.0)
    step = Step(1, STEPS, layout=adapter.layout(run.latents, run.extras))
    preds = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras)
    ours = method.combine(preds, step)
    with torch.no_grad():
        u, c = (_diffusers_forward(name, pipe, run, t, row) for row in (0, 1))
        with skip_blocks(pipe, layers):
            c_skip = _diffusers_forward(name, pipe, run, t, 1)
    torch.testing.assert_close(ours, u + 4.0 * (c - u) + 2.0 * (c - c_skip), atol=1e-5, rtol=1e-4)
    assert (c - c_skip).abs().max() > 1e-3, "skipping changed nothing: the test could not fail"


@pytest.mark.parametrize("name", NEW)
def test_capture_cosine_equals_separate_forwards_at_step_zero(name):
    check_capture_cosine(tiny(name), name, lambda pipe, run, t, row: _diffusers_forward(name, pipe, run, t, row))


@pytest.mark.parametrize("name,processor", [("tiny-sd3", PAGJointAttnProcessor2_0),
                                            ("tiny-pixart-sigma", PAGIdentitySelfAttnProcessor2_0)])
def test_identity_attention_equals_diffusers_pag_processor(name, processor):
    """diffusers' PAG processors perturb the second half of the batch: run [c, c] through the transformer with
    one on block 1 and compare its second row with our ``identity_attention`` pass."""
    pipe = tiny(name)
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    passes = {"cond": Pass("cond"), "ptb": Pass.of("cond", identity_attention=["1"])}
    preds = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, passes, run.extras)
    attn = adapter.block("1").attn if name == "tiny-sd3" else adapter.block("1").attn1
    original = attn.processor
    attn.set_processor(processor())
    try:
        with torch.no_grad():
            if name == "tiny-sd3":
                ref = pipe.transformer(hidden_states=run.latents.repeat(2, 1, 1, 1), timestep=t.expand(2),
                                       encoder_hidden_states=run.cond.embeds.repeat(2, 1, 1),
                                       pooled_projections=run.cond.pooled.repeat(2, 1), return_dict=False)[0]
            else:
                ref = pipe.transformer(run.latents.repeat(2, 1, 1, 1), encoder_hidden_states=run.cond.embeds.repeat(2, 1, 1),
                                       encoder_attention_mask=run.cond.mask.repeat(2, 1), timestep=t.expand(2),
                                       added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                                       return_dict=False)[0].chunk(2, dim=1)[0]
    finally:
        attn.set_processor(original)
    torch.testing.assert_close(preds["cond"], ref[0:1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(preds["ptb"], ref[1:2], atol=1e-5, rtol=1e-4)
    assert (preds["cond"] - preds["ptb"]).abs().max() > 1e-3, "the perturbation changed nothing"


@pytest.mark.parametrize("name", NEW)
def test_baselines_run_and_guide(name):
    cfg = _ours(name, CFG(4.0))
    for method in (SCFG(4.0), ConceptDiffusion(4.0, 4.0)):
        image = sample(adapter_for(tiny(name)), method, Request("a red book and a gold clock", NEG), SEED, STEPS, H, W,
                       MSL, output_type="np")
        assert np.isfinite(image).all()
        assert np.abs(image - cfg).max() > TOL, f"{method.name} gave the CFG image"
