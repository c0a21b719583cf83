"""SANA against diffusers' SanaPipeline, SanaPAGPipeline and its transformer forward; the linear attention's kernel
against diffusers' processor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import AutoencoderDC, SanaPAGPipeline, SanaPipeline, SanaTransformer2DModel
from diffusers.models.attention_processor import SanaLinearAttnProcessor2_0
from transformers import Gemma2Model

import cslg
from cslg.families import adapter_for
from cslg.families.sana import RELU_LINEAR, SanaAdapter
from cslg.guidance.sampling import sample
from cslg.methods import CFG, PAG, NoGuidance, Request
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

NAME = "tiny-sana"
STEPS = 3
CLOSE = 1e-4  # what diffusers and the adapter reach on these float images (measured: 0 to 1e-6)
SANA = dict(use_resolution_binning=False, complex_human_instruction=None)


def _run(pipe, **kw):
    return pipe(PROMPT, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **SANA, **kw).images[0]


def _ours(method):
    return sample(adapter_for(tiny(NAME)), method, Request(PROMPT, NEG), SEED, STEPS, H, W, MSL, output_type="np")


def _forward(pipe, run, t, row):
    """Row ``row``'s prediction from diffusers' transformer, called as SanaPipeline calls it."""
    cond = run.cond.select([row])
    return pipe.transformer(run.latents, encoder_hidden_states=cond.embeds, encoder_attention_mask=cond.mask,
                            timestep=t.expand(1) * pipe.transformer.config.timestep_scale, return_dict=False)[0].float()


def test_preset_is_sana():
    assert NAME in TINY_PRESETS
    pipe = tiny(NAME)
    assert type(pipe) is SanaPipeline and type(pipe.transformer) is SanaTransformer2DModel
    assert isinstance(pipe.vae, AutoencoderDC) and isinstance(pipe.text_encoder, Gemma2Model)
    assert isinstance(pipe.transformer.transformer_blocks[0].attn1.processor, SanaLinearAttnProcessor2_0)
    ids = pipe.tokenizer("a sign", padding="max_length", max_length=8).input_ids
    assert ids[0] == pipe.tokenizer.bos_token_id and ids[-1] == pipe.tokenizer.pad_token_id
    assert set(SanaAdapter.released) == {"transformer", "height", "width", "steps"}
    roles = adapter_for(pipe).text_roles("A Sign", MSL)
    ids = pipe.tokenizer("a sign").input_ids
    assert roles.background == (0,) and pipe.tokenizer.decode([ids[i] for i in roles.content]) == "a sign"


def test_cfg_and_none_equal_the_pipeline():
    ref_cfg, ref_none = _run(tiny(NAME), negative_prompt=NEG, guidance_scale=4.0), _run(tiny(NAME), guidance_scale=1.0)
    assert np.abs(ref_cfg - _ours(CFG(4.0))).max() <= CLOSE
    assert np.abs(ref_none - _ours(NoGuidance())).max() <= CLOSE
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


@pytest.mark.parametrize("layers", [("1",), ("0", "2")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    check_cslg_equals_identity_blocks(tiny(NAME), _forward, layers, STEPS)


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    check_capture_cosine(tiny(NAME), NAME, _forward)


@pytest.mark.parametrize("layer", ["0", "2"])
def test_pag_equals_sana_pag_pipeline(layer):
    """SanaPAGPipeline perturbs the linear self-attention with diffusers' PAG processors (its identity path:
    ``to_out(to_v(x))``); ours goes through the adapter's attention kernel."""
    ref_pipe = SanaPAGPipeline.from_pipe(tiny(NAME), pag_applied_layers=[f"transformer_blocks.{layer}"])
    ref_pipe.set_progress_bar_config(disable=True)
    ref = _run(ref_pipe, negative_prompt=NEG, guidance_scale=4.0, pag_scale=2.0)
    ours = cslg.generate(tiny(NAME), PROMPT, PAG([layer], 2.0, cfg_scale=4.0), seed=SEED, steps=STEPS, height=H,
                         width=W, negative_prompt=NEG, max_sequence_length=MSL, output_type="np").images[0]
    assert np.abs(ref - ours).max() <= CLOSE
    assert np.abs(_ours(CFG(4.0)) - ours).max() > TOL, "PAG gave the CFG image: the test could not fail"


def test_pag_default_layer_is_the_pipeline_default():
    assert PAG(scale=2.0).bind(adapter_for(tiny(NAME))).layers == ("0",)


def test_linear_attention_probabilities_reproduce_the_processor():
    """The kernel's probabilities times the values are the processor's attention output (before ``to_out``)."""
    attn = tiny(NAME).transformer.transformer_blocks[1].attn1
    x = torch.randn(2, 16, attn.to_q.in_features)
    with torch.no_grad():
        probs = RELU_LINEAR.head_probs(*RELU_LINEAR.queries_keys(attn, (x,), {}))
        v = attn.to_v(x).unflatten(-1, (attn.heads, -1)).transpose(1, 2)
        mixed = (probs @ v.float()).transpose(1, 2).flatten(2)
        expected = attn(x)
    torch.testing.assert_close(attn.to_out[0](mixed), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]), atol=1e-5, rtol=0)


def test_baselines_run_and_guide():
    check_baselines_run(tiny(NAME), STEPS)


def test_save_pretrained_round_trip(tmp_path):
    check_save_pretrained_round_trip(tiny(NAME), tmp_path, STEPS, **SANA)


def test_released_config_has_the_published_size():
    check_released_size(SanaTransformer2DModel, SanaAdapter.released, 1.6)  # SANA 1600M


def test_skip_blocks_in_the_pipeline_forward():
    check_skip_blocks_in_the_pipeline_forward(tiny(NAME), _forward)


def test_bf16_cfg_equals_the_pipeline():
    check_bf16_cfg_equals_the_pipeline(NAME, 4.0, STEPS, guidance_scale=4.0, **SANA)
