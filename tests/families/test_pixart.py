"""PixArt-α (the PixArt adapter's second pipeline) against diffusers' PixArtAlphaPipeline and its transformer forward,
with the 1024 px checkpoint's resolution conditions (PixArt-Σ: tests/families/test_adapters.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PixArtAlphaPipeline, PixArtTransformer2DModel

from cslg.families import adapter_for
from cslg.families.pixart import PixArtAlphaAdapter
from cslg.guidance.sampling import sample
from cslg.methods import CFG, NoGuidance, Request
from cslg.options import TINY_PRESETS

from ..helpers import H, MSL, W, tiny
from .checks import (
    NEG,
    PROMPT,
    SEED,
    TOL,
    check_baselines_run,
    check_bf16_cfg_equals_the_pipeline,
    check_capture_cosine,
    check_cslg_equals_identity_blocks,
    check_released_size,
    check_save_pretrained_round_trip,
    check_skip_blocks_in_the_pipeline_forward,
)

NAME = "tiny-pixart-alpha"
STEPS = 3
CLOSE = 1e-4  # what diffusers and the adapter reach on these float images (measured: 0 to 1e-6)


def _pipeline(**kw):
    return tiny(NAME)(PROMPT, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(SEED), use_resolution_binning=False,
                      clean_caption=False, **kw).images[0]


def _forward(pipe, run, t, row):
    """Row ``row``'s noise prediction from diffusers' transformer, called as PixArtAlphaPipeline calls it."""
    cond = run.cond.select([row])
    vsf = pipe.vae_scale_factor
    height, width = run.latents.shape[-2] * vsf, run.latents.shape[-1] * vsf
    added = {"resolution": torch.tensor([[height, width]], dtype=cond.embeds.dtype),
             "aspect_ratio": torch.tensor([[height / width]], dtype=cond.embeds.dtype)}
    out = pipe.transformer(run.latents, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                           timestep=t.expand(1), added_cond_kwargs=added, return_dict=False)[0]
    return out.chunk(2, dim=1)[0]


def test_preset_is_pixart_alpha_with_resolution_conditions():
    assert NAME in TINY_PRESETS
    pipe = tiny(NAME)
    assert type(pipe) is PixArtAlphaPipeline and type(pipe.transformer) is PixArtTransformer2DModel
    assert pipe.transformer.config.sample_size == 128 and pipe.transformer.use_additional_conditions
    adapter = adapter_for(pipe)
    assert type(adapter) is PixArtAlphaAdapter and adapter.name == "pixart-alpha"
    assert adapter.default_max_sequence_length == 120 and adapter.pag_default_layers == ("1",)
    with torch.device("meta"):  # the released checkpoint takes the resolution conditions too
        assert PixArtTransformer2DModel(**PixArtAlphaAdapter.released["transformer"]).use_additional_conditions


def test_cfg_and_none_equal_the_pipeline():
    ref_cfg, ref_none = _pipeline(negative_prompt=NEG, guidance_scale=4.0), _pipeline(guidance_scale=1.0)
    ours = lambda method: sample(adapter_for(tiny(NAME)), method, Request(PROMPT, NEG), SEED, STEPS, H, W, MSL,  # noqa: E731
                                 output_type="np")
    assert np.abs(ref_cfg - ours(CFG(4.0))).max() <= CLOSE
    assert np.abs(ref_none - ours(NoGuidance())).max() <= CLOSE
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


@pytest.mark.parametrize("layers", [("1",), ("0", "2")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    check_cslg_equals_identity_blocks(tiny(NAME), _forward, layers, STEPS)


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    check_capture_cosine(tiny(NAME), NAME, _forward)


def test_baselines_run_and_guide():
    check_baselines_run(tiny(NAME), STEPS)


def test_save_pretrained_round_trip(tmp_path):
    check_save_pretrained_round_trip(tiny(NAME), tmp_path, STEPS, use_resolution_binning=False, clean_caption=False)


def test_released_config_has_the_published_size():
    check_released_size(PixArtTransformer2DModel, PixArtAlphaAdapter.released, 0.611)  # PixArt-α: 0.6B


def test_skip_blocks_in_the_pipeline_forward():
    check_skip_blocks_in_the_pipeline_forward(tiny(NAME), _forward)


def test_bf16_cfg_equals_the_pipeline():
    check_bf16_cfg_equals_the_pipeline(NAME, 4.0, STEPS, guidance_scale=4.0, use_resolution_binning=False,
                                       clean_caption=False)
