"""FLUX.2 (dev: distilled guidance embedding, Mistral3) and FLUX.2 [klein] (true CFG, Qwen3) against diffusers'
``Flux2Pipeline`` / ``Flux2KleinPipeline`` and their transformer's own forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline, Flux2KleinPipeline, Flux2Pipeline, Flux2Transformer2DModel
from transformers import Mistral3ForConditionalGeneration, Qwen3ForCausalLM

import cslg
from cslg.families import adapter_for
from cslg.guidance.sampling import DegenerateMethodWarning, sample
from cslg.methods import CFG, NoGuidance, Request
from cslg.prompts import PromptPair

from ..helpers import tiny
from .reference import (
    check_baselines_run_and_guide,
    check_build_is_deterministic_and_seeded,
    check_cslg_against_identities,
    capture_against_forwards,
    flux_like_identities,
    flux_like_image_tokens,
)

PROMPT = "a sign: 'OPEN'"
NEG = "blurry"
SEED = 3
STEPS = 3
SIZE = 32
MSL = 64  # the tiny Mistral template (system message included) takes ~40 tokens
# Text reaches FLUX.2's image tokens only through attention, over mostly template text tokens: in the random tiny
# model the prompt moves pixels by a few 1/255, so agreement is checked far below the 1/255 of an 8-bit pixel (it is
# ~1e-6), and "the test could fail" against 10x that.
TOL = 1e-4
PRESETS = ["tiny-flux2", "tiny-flux2-klein"]


def _pipeline(pipe, **kw) -> np.ndarray:
    return pipe(prompt=PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=MSL,
                output_type="np", generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(pipe, method, negative=NEG, guidance=None) -> np.ndarray:
    return sample(adapter_for(pipe, guidance), method, Request(PROMPT, negative), SEED, STEPS, SIZE, SIZE, MSL,
                  output_type="np")


def test_presets_are_real_small_classes():
    for name, cls, encoder in [("tiny-flux2", Flux2Pipeline, Mistral3ForConditionalGeneration),
                               ("tiny-flux2-klein", Flux2KleinPipeline, Qwen3ForCausalLM)]:
        pipe = tiny(name)
        assert type(pipe) is cls and type(pipe.transformer) is Flux2Transformer2DModel
        assert isinstance(pipe.text_encoder, encoder)
        assert pipe.transformer.config.guidance_embeds == (name == "tiny-flux2")
        for key, module in pipe.components.items():
            if isinstance(module, torch.nn.Module):
                assert not module.training and sum(p.numel() for p in module.parameters()) < 1_000_000, key
    assert not tiny("tiny-flux2-klein").config.is_distilled


def test_flux2_distilled_guidance_equals_the_pipeline():
    pipe = tiny("tiny-flux2")
    default, other = _pipeline(pipe), _pipeline(pipe, guidance_scale=2.0)
    assert np.abs(_ours(pipe, NoGuidance()) - default).max() <= TOL  # the family default, 4.0
    assert np.abs(_ours(pipe, NoGuidance(), guidance=2.0) - other).max() <= TOL
    assert np.abs(default - other).max() > 10 * TOL, "the guidance embedding changed nothing: the test could not fail"


def test_klein_cfg_and_none_equal_the_pipeline():
    pipe = tiny("tiny-flux2-klein")
    negative, _ = pipe.encode_prompt(NEG, device="cpu", max_sequence_length=MSL)
    ref_cfg = _pipeline(pipe, guidance_scale=4.0, negative_prompt_embeds=negative)
    ref_empty = _pipeline(pipe, guidance_scale=3.0)  # the pipeline's own negative prompt: ""
    ref_none = _pipeline(pipe, guidance_scale=1.0)
    assert np.abs(_ours(pipe, CFG(4.0)) - ref_cfg).max() <= TOL
    assert np.abs(_ours(pipe, CFG(3.0), negative="") - ref_empty).max() <= TOL
    assert np.abs(_ours(pipe, NoGuidance()) - ref_none).max() <= TOL
    assert np.abs(ref_cfg - ref_none).max() > 10 * TOL, "CFG changed nothing: the test could not fail"


def test_klein_family_default_follows_is_distilled():
    pipe = tiny("tiny-flux2-klein")
    distilled = Flux2KleinPipeline(**pipe.components, is_distilled=True)
    distilled.set_progress_bar_config(disable=True)
    assert adapter_for(pipe).default_cfg_scale == 4.0 and adapter_for(distilled).default_cfg_scale == 1.0
    with pytest.warns(DegenerateMethodWarning, match="cfg scale 1: equals none"):
        ours = cslg.generate(distilled, PROMPT, CFG(), seed=SEED, steps=STEPS, height=SIZE, width=SIZE,
                             max_sequence_length=MSL, output_type="np").images[0]
    assert np.abs(ours - _pipeline(distilled)).max() <= TOL  # the pipeline ignores guidance_scale=4 when distilled


def _forward(pipe, run, t, row: int) -> torch.Tensor:
    """Row ``row``'s prediction from diffusers' own transformer forward, called as the pipeline calls it."""
    cond = run.cond.select([row])
    guidance = torch.full([1], 4.0) if pipe.transformer.config.guidance_embeds else None
    return pipe.transformer(hidden_states=run.latents, timestep=t.expand(1) / 1000, guidance=guidance,
                            encoder_hidden_states=cond.embeds, txt_ids=cond.shared["text_ids"][None],
                            img_ids=run.extras["img_ids"][None], return_dict=False)[0]


@pytest.mark.parametrize("name", PRESETS)
@pytest.mark.parametrize("layers", [("1",), ("0", "s2"), ("s0", "s5")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(name, layers):
    pipe = tiny(name)
    check_cslg_against_identities(pipe, PROMPT, NEG, layers, SEED, STEPS, SIZE, MSL,
        lambda run, t, row: _forward(pipe, run, t, row),
        flux_like_identities(pipe.transformer, layers))


@pytest.mark.parametrize("name", PRESETS)
def test_capture_cosine_equals_separate_forwards_at_step_zero(name):
    pipe = tiny(name)
    adapter = adapter_for(pipe)
    pair = PromptPair("a dog", "a dog with a tag: 'buddy'")
    expected = capture_against_forwards(
        pipe, name, pair, SEED, SIZE, MSL, adapter.guidance if adapter.has_distilled_guidance else 1.0,
        lambda run, t, row: _forward(pipe, run, t, row),
        lambda run: flux_like_image_tokens(pipe.transformer, run.cond.embeds.shape[1]))
    assert expected.min() < 1 - 1e-5, "the prompts gave equal activations: the test could not fail"


@pytest.mark.parametrize("name", PRESETS)
def test_baselines_run_and_guide(name):
    check_baselines_run_and_guide(tiny(name), "a red book and a gold clock", NEG, ("1", "s2"), SEED, STEPS, SIZE, MSL,
                                  differs=10 * TOL)


def test_text_roles_find_the_prompt_in_the_chat_template():
    for name in PRESETS:
        pipe = tiny(name)
        adapter = adapter_for(pipe)
        roles = adapter.text_roles(PROMPT, MSL)
        tok = pipe.tokenizer  # the pipelines tokenize the chat text, padded on the right to MSL
        text_ids = tok(adapter.chat_text(PROMPT), add_special_tokens=False).input_ids
        assert tok.decode([text_ids[i] for i in roles.content]) == PROMPT, name
        assert roles.background == tuple(range(len(text_ids), MSL)), name


@pytest.mark.parametrize("name", PRESETS)
def test_save_pretrained_round_trip(name, tmp_path):
    pipe = tiny(name)
    pipe.save_pretrained(tmp_path / name)
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / name))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert dict(loaded.config).get("is_distilled") == dict(pipe.config).get("is_distilled")
    assert np.abs(_pipeline(loaded) - _pipeline(pipe)).max() < 1e-5


@pytest.mark.parametrize("name", PRESETS)
def test_builds_are_deterministic_and_seeded(name):
    check_build_is_deterministic_and_seeded(name)


def test_guider_skips_double_and_joint_blocks_in_the_modular_klein_pipeline():
    """``cslg.diffusers_guider`` in diffusers' modular Klein pipeline (its negative prompt is always ""): CFG and CSLG
    with a skipped single (``JOINT``) block equal ``cslg.generate``; identity attention on a joint block refuses."""
    from diffusers.modular_pipelines.flux2 import Flux2KleinBaseAutoBlocks

    pipe = tiny("tiny-flux2-klein")
    blocks = Flux2KleinBaseAutoBlocks()
    blocks.sub_blocks.pop("decode")
    mp = blocks.init_pipeline()
    mp.update_components(**{k: v for k, v in pipe.components.items() if k in mp._component_specs})
    size = dict(height=SIZE, width=SIZE, max_sequence_length=MSL)
    for method in (CFG(4.0), cslg.CSLG(["1", "s2"], 2.0, cfg_scale=4.0)):
        mp.update_components(guider=cslg.diffusers_guider(method, mp))
        out = mp(prompt=PROMPT, num_inference_steps=2, generator=torch.Generator("cpu").manual_seed(0),
                 output="latents", **size)
        ours = cslg.generate(pipe, PROMPT, method, negative_prompt="", steps=2, output_type="latent", progress=False,
                             **size).images
        torch.testing.assert_close(adapter_for(pipe).unpack(ours, SIZE, SIZE), out, atol=1e-5, rtol=1e-4)
    mp.update_components(guider=cslg.diffusers_guider(cslg.PAG(["s1"], 2.0, cfg_scale=4.0), mp))
    with pytest.raises(ValueError, match="image tokens cannot be told apart"):
        mp(prompt=PROMPT, num_inference_steps=1, output="latents", **size)
