"""CogView4 (blocks returning ``(image, text)``, called positionally) against diffusers' ``CogView4Pipeline`` and
its transformer's forward; prompts of different padded lengths in one batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import CogView4Pipeline, CogView4Transformer2DModel, DiffusionPipeline
from transformers import GlmModel

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
)

NAME = "tiny-cogview4"
PROMPT = "a neon sign that says 'OPEN' above a door"  # 48 text tokens after the pipeline's padding to 16s
NEG = "blurry, low quality"  # 32
SEED = 3
STEPS = 3
SIZE = 32
MSL = 64
TOL = 1 / 255


def _pipeline(pipe, **kw) -> np.ndarray:
    return pipe(PROMPT, num_inference_steps=STEPS, height=SIZE, width=SIZE, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(pipe, method, negative=NEG) -> np.ndarray:
    return sample(adapter_for(pipe), method, Request(PROMPT, negative), SEED, STEPS, SIZE, SIZE, MSL, output_type="np")


def _embeds(pipe, prompt: str) -> torch.Tensor:
    return pipe.encode_prompt(prompt, do_classifier_free_guidance=False, device="cpu", max_sequence_length=MSL)[0]


def test_preset_is_real_small_classes():
    pipe = tiny(NAME)
    assert type(pipe) is CogView4Pipeline and type(pipe.transformer) is CogView4Transformer2DModel
    assert isinstance(pipe.text_encoder, GlmModel)
    assert _embeds(pipe, PROMPT).shape[1] != _embeds(pipe, NEG).shape[1]  # the batch needs the padding mask
    for key, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training and sum(p.numel() for p in module.parameters()) < 1_000_000, key


def test_cfg_and_none_equal_the_pipeline():
    pipe = tiny(NAME)
    ref_cfg, ref_none = _pipeline(pipe, negative_prompt=NEG, guidance_scale=4.0), _pipeline(pipe, guidance_scale=1.0)
    assert np.abs(_ours(pipe, CFG(4.0)) - ref_cfg).max() <= TOL
    assert np.abs(_ours(pipe, NoGuidance()) - ref_none).max() <= TOL
    assert np.abs(_ours(pipe, CFG(), negative="") - _pipeline(pipe)).max() <= TOL  # defaults: scale 5, "" negative
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


def _forward(pipe, run, t, prompt: str) -> torch.Tensor:
    """The prediction for ``prompt`` (encoded alone, unpadded) from diffusers' own transformer forward, called as
    the pipeline calls it."""
    size = torch.tensor([[SIZE, SIZE]], dtype=torch.float32)
    return pipe.transformer(hidden_states=run.latents, encoder_hidden_states=_embeds(pipe, prompt),
                            timestep=t.expand(1), original_size=size, target_size=size, crop_coords=torch.zeros(1, 2),
                            return_dict=False)[0]


def _identities(pipe, layers):
    """From diffusers' source: the forward calls ``block(hidden_states, encoder_hidden_states, temb, ...)``
    positionally and the block returns ``(hidden_states, encoder_hidden_states)``."""
    return [(pipe.transformer.transformer_blocks[int(name)], lambda a, k: (a[0], a[1])) for name in layers]


@pytest.mark.parametrize("layers", [("1",), ("0", "4")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    pipe = tiny(NAME)
    run = check_cslg_against_identities(pipe, PROMPT, NEG, layers, SEED, STEPS, SIZE, MSL,
        lambda run, t, row: _forward(pipe, run, t, (NEG, PROMPT)[row]),
        _identities(pipe, layers))
    assert run.cond.mask is not None  # the rows differ in length: the padded keys are masked


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    pipe = tiny(NAME)
    pair = PromptPair("a dog", "a dog wearing a tag that says 'buddy'")  # 16 and 48 tokens
    expected = capture_against_forwards(
        pipe, NAME, pair, SEED, SIZE, MSL, 1.0,
        lambda run, t, row: _forward(pipe, run, t, (pair.negative, pair.positive)[row]),
        lambda run: [(b, lambda out: out[0]) for b in pipe.transformer.transformer_blocks])
    assert expected.min() < 0.9999, "the prompts gave equal activations: the test could not fail"


def test_baselines_run_and_guide():
    """The same seed's CFG image is reproduced exactly, so any change shows; the prompt-dependent ones (S-CFG: ~1e-3,
    APG: ~2e-3) are small in the random tiny model, where text reaches the image only through attention."""
    check_baselines_run_and_guide(tiny(NAME), "a red book and a gold clock", NEG, ("1", "4"), SEED, STEPS, SIZE, MSL,
                                  differs=1e-4)


def test_text_roles_are_right_aligned():
    pipe = tiny(NAME)
    text_len = 64  # the row padded to a longer prompt of the batch
    roles = adapter_for(pipe).text_roles(PROMPT, text_len)
    ids = pipe.tokenizer(PROMPT).input_ids
    assert roles.content[-1] == text_len - 1 and pipe.tokenizer.decode([ids[i - text_len + len(ids)]
                                                                      for i in roles.content]) == PROMPT
    assert pipe.tokenizer.convert_ids_to_tokens([ids[i - text_len + len(ids)] for i in roles.background]) == \
        ["[gMASK]", "<sop>"]


def test_save_pretrained_round_trip(tmp_path):
    pipe = tiny(NAME)
    pipe.save_pretrained(tmp_path / NAME)
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / NAME))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is CogView4Pipeline and loaded.tokenizer(PROMPT).input_ids == pipe.tokenizer(PROMPT).input_ids
    assert np.abs(_pipeline(loaded, negative_prompt=NEG) - _pipeline(pipe, negative_prompt=NEG)).max() < 1e-5


def test_build_is_deterministic_and_seeded():
    check_build_is_deterministic_and_seeded(NAME)
