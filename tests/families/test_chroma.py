"""Chroma against diffusers' ``ChromaPipeline`` (true CFG with a negative prompt) and its transformer's forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ChromaPipeline, ChromaTransformer2DModel, DiffusionPipeline

from cslg.families import adapter_for
from cslg.guidance.sampling import sample
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

NAME = "tiny-chroma"
PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 3
STEPS = 3
SIZE = 32
MSL = 64
TOL = 1 / 255


def _pipeline(pipe, **kw) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(pipe, method) -> np.ndarray:
    return sample(adapter_for(pipe), method, Request(PROMPT, NEG), SEED, STEPS, SIZE, SIZE, MSL, output_type="np")


def test_preset_is_real_small_classes():
    pipe = tiny(NAME)
    assert type(pipe) is ChromaPipeline and type(pipe.transformer) is ChromaTransformer2DModel
    for key, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training and sum(p.numel() for p in module.parameters()) < 1_000_000, key


def test_cfg_and_none_equal_the_pipeline():
    pipe = tiny(NAME)
    ref_cfg, ref_none = _pipeline(pipe, negative_prompt=NEG, guidance_scale=4.0), _pipeline(pipe, guidance_scale=1.0)
    assert np.abs(_ours(pipe, CFG(4.0)) - ref_cfg).max() <= TOL
    assert np.abs(_ours(pipe, NoGuidance()) - ref_none).max() <= TOL
    assert np.abs(_ours(pipe, CFG()) - _pipeline(pipe, negative_prompt=NEG)).max() <= TOL  # the family default, 5
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


def _forward(pipe, run, t, row: int) -> torch.Tensor:
    """Row ``row``'s prediction from diffusers' own transformer forward, called as the pipeline calls it."""
    cond = run.cond.select([row])
    mask = pipe._prepare_attention_mask(1, run.latents.shape[1], run.latents.dtype, cond.mask)
    return pipe.transformer(hidden_states=run.latents, timestep=t.expand(1) / 1000, encoder_hidden_states=cond.embeds,
                            txt_ids=cond.shared["text_ids"], img_ids=run.extras["img_ids"], attention_mask=mask,
                            return_dict=False)[0]


@pytest.mark.parametrize("layers", [("1",), ("0", "s2"), ("s0", "s5")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    pipe = tiny(NAME)
    check_cslg_against_identities(pipe, PROMPT, NEG, layers, SEED, STEPS, SIZE, MSL,
        lambda run, t, row: _forward(pipe, run, t, row),
        flux_like_identities(pipe.transformer, layers))


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    pipe = tiny(NAME)
    pair = PromptPair("a dog on a sidewalk", "a dog wearing a tag that says 'buddy'")
    expected = capture_against_forwards(
        pipe, NAME, pair, SEED, SIZE, MSL, 1.0,
        lambda run, t, row: _forward(pipe, run, t, row),
        lambda run: flux_like_image_tokens(pipe.transformer, run.cond.embeds.shape[1]))
    assert expected.min() < 0.9999, "the prompts gave equal activations: the test could not fail"


def test_baselines_run_and_guide():
    check_baselines_run_and_guide(tiny(NAME), "a red book and a gold clock", NEG, ("1", "s2"), SEED, STEPS, SIZE, MSL)


def test_text_roles_are_the_visible_tokens():
    pipe = tiny(NAME)
    roles = adapter_for(pipe).text_roles(PROMPT, MSL)
    _, _, mask, *_ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False, device="cpu",
                                        max_sequence_length=MSL)
    visible = tuple(int(i) for i in mask[0].nonzero())
    assert visible == roles.content + roles.background  # content, </s> and the one unmasked padding token
    ids = pipe.tokenizer(PROMPT).input_ids
    assert pipe.tokenizer.decode([ids[i] for i in roles.content]) == PROMPT


def test_save_pretrained_round_trip(tmp_path):
    pipe = tiny(NAME)
    pipe.save_pretrained(tmp_path / NAME)
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / NAME))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is ChromaPipeline
    assert np.abs(_pipeline(loaded, negative_prompt=NEG) - _pipeline(pipe, negative_prompt=NEG)).max() < 1e-5


def test_build_is_deterministic_and_seeded():
    check_build_is_deterministic_and_seeded(NAME)
