"""Z-Image against diffusers' ZImagePipeline (CFG with its normalisation and truncation options) and its
transformer forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline, ZImageTransformer2DModel
from diffusers.models.transformers import transformer_z_image
from diffusers.modular_pipelines.z_image import ZImageAutoBlocks
from transformers import Qwen3Model

import cslg
from cslg.families import adapter_for
from cslg.families.zimage import ZImageAdapter
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.guidance.sampling import prepare, sample
from cslg.methods import CFG, CSLG, PAG, SCFG, NoGuidance, Request
from cslg.options import TINY_PRESETS

from ..helpers import H, MSL, W, tiny
from ..methods.test_pag import _naive_identity_dispatch
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

NAME = "tiny-zimage"
STEPS = 3
CLOSE = 1e-4  # what diffusers and the adapter reach on these float images (measured: below 1e-6)


PADDED = 48  # 12 x 12 image tokens: the transformer pads them to 160


def _run(size=H, **kw):
    return tiny(NAME)(PROMPT, num_inference_steps=STEPS, height=size, width=size, max_sequence_length=MSL,
                      output_type="np", generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(method, adapter=None, size=H):
    adapter = adapter or adapter_for(tiny(NAME))
    return sample(adapter, method, Request(PROMPT, NEG), SEED, STEPS, size, size, MSL, output_type="np")


def _forward(pipe, run, t, row):
    """Row ``row``'s prediction (``-`` the transformer's output) from diffusers' forward, called as ZImagePipeline
    calls it: a list of latents ``[C, 1, H, W]`` and a list of unpadded prompt embeddings."""
    cap = run.cond.embeds[row][run.cond.mask[row]]
    out = pipe.transformer([run.latents[0].unsqueeze(1)], (1000 - t.expand(1)) / 1000, [cap], return_dict=False)[0]
    return -torch.stack(out).squeeze(2).float()


def test_preset_is_zimage():
    assert NAME in TINY_PRESETS
    pipe = tiny(NAME)
    assert type(pipe) is ZImagePipeline and type(pipe.transformer) is ZImageTransformer2DModel
    assert isinstance(pipe.text_encoder, Qwen3Model)
    assert len(pipe.transformer.noise_refiner) == len(pipe.transformer.context_refiner) == 2
    adapter = adapter_for(pipe)
    assert adapter.layer_names == [str(i) for i in range(len(pipe.transformer.layers))]
    assert set(ZImageAdapter.released) == {"transformer", "height", "width", "steps"}
    roles = adapter.text_roles("a sign", 32)
    ids = pipe.tokenizer(pipe.tokenizer.apply_chat_template([{"role": "user", "content": "a sign"}], tokenize=False,
                                                           add_generation_prompt=True, enable_thinking=True)).input_ids
    assert pipe.tokenizer.decode([ids[i] for i in roles.content]) == "a sign"
    assert roles.background == tuple(range(roles.content[-1] + 1, 32))


@pytest.mark.parametrize("options", [{}, {"cfg_normalization": 1.0}, {"cfg_truncation": 0.1}],
                         ids=["plain", "normalised", "truncated"])
def test_cfg_equals_the_pipeline(options):
    """The pipeline's guidance_scale g is our CFG(g + 1); its CFG options are the adapter's."""
    ref = _run(negative_prompt=NEG, guidance_scale=3.0, **options)
    assert np.abs(ref - _ours(CFG(4.0), ZImageAdapter(tiny(NAME), **options))).max() <= CLOSE
    if options:
        assert np.abs(ref - _run(negative_prompt=NEG, guidance_scale=3.0)).max() > 2 * TOL, "the option did nothing"


def test_padded_image_tokens():
    """At 48 px the image tokens are padded with the transformer's pad token: CFG still equals the pipeline and S-CFG
    lays its maps on the 12 x 12 grid (the padding is outside the image stream)."""
    ref = _run(PADDED, negative_prompt=NEG, guidance_scale=3.0)
    assert np.abs(ref - _ours(CFG(4.0), size=PADDED)).max() <= CLOSE
    assert np.isfinite(_ours(SCFG(4.0), size=PADDED)).all()
    check_cslg_equals_identity_blocks(tiny(NAME), _forward, ("1",), STEPS, height=PADDED, width=PADDED)


def test_bad_cfg_options_are_refused():
    with pytest.raises(ValueError, match="cfg_normalization must be >= 0"):
        ZImageAdapter(tiny(NAME), cfg_normalization=-1.0)
    with pytest.raises(ValueError, match="cfg_truncation must be >= 0"):
        ZImageAdapter(tiny(NAME), cfg_truncation=-0.5)


def test_none_equals_the_pipeline_without_guidance():
    ref = _run(guidance_scale=0.0)
    assert np.abs(ref - _ours(NoGuidance())).max() <= CLOSE
    assert np.abs(ref - _run(negative_prompt=NEG, guidance_scale=3.0)).max() > 2 * TOL


@pytest.mark.parametrize("layers", [("1",), ("0", "2")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    check_cslg_equals_identity_blocks(tiny(NAME), _forward, layers, STEPS)


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    n_image = (H // tiny(NAME).vae_scale_factor // 2) * (W // tiny(NAME).vae_scale_factor // 2)
    check_capture_cosine(tiny(NAME), NAME, _forward, image_of=lambda x: x[:, :n_image])


def test_identity_attention_keeps_the_text_keys_visible(monkeypatch):
    """PAG's perturbed pass on the unified sequence equals diffusers' forward in which block 1's attention is an
    explicit softmax where each image query sees itself and the text tokens (patched at diffusers' dispatch)."""
    pipe = tiny(NAME)
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    passes = {"ptb": Pass.of("cond", identity_attention=["1"])}
    ours = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, passes, run.extras)["ptb"]
    with torch.no_grad():
        plain = _forward(pipe, run, t, 0)
    n_image = (H // pipe.vae_scale_factor // 2) * (W // pipe.vae_scale_factor // 2)
    original, active = transformer_z_image.dispatch_attention_fn, []
    monkeypatch.setattr(transformer_z_image, "dispatch_attention_fn", lambda *a, **kw: (
        _naive_identity_dispatch(n_image, False)(*a, **kw) if active else original(*a, **kw)))
    block = adapter.block("1")
    hooks = [block.register_forward_pre_hook(lambda m, a: active.append(1) and None),
             block.register_forward_hook(lambda m, a, o: active.pop() and None)]
    try:
        with torch.no_grad():
            ref = _forward(pipe, run, t, 0)
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(ours, ref, atol=1e-5, rtol=1e-4)
    assert (ours - plain).abs().max() > 1e-3, "the perturbation changed nothing"


def test_pag_runs():
    image = _ours(PAG(["1"], 2.0, cfg_scale=4.0))
    assert np.isfinite(image).all() and np.abs(image - _ours(CFG(4.0))).max() > 1e-3


def test_baselines_run_and_guide():
    check_baselines_run(tiny(NAME), STEPS)


def test_save_pretrained_round_trip(tmp_path):
    check_save_pretrained_round_trip(tiny(NAME), tmp_path, STEPS, negative_prompt=NEG, guidance_scale=3.0)


def test_released_config_has_the_published_size():
    check_released_size(ZImageTransformer2DModel, ZImageAdapter.released, 6.15)  # Z-Image: 6B (6.15B)


def test_skip_blocks_in_the_pipeline_forward():
    check_skip_blocks_in_the_pipeline_forward(tiny(NAME), _forward)


def test_bf16_cfg_equals_the_pipeline():
    check_bf16_cfg_equals_the_pipeline(NAME, 4.0, STEPS, guidance_scale=3.0)


@pytest.mark.parametrize("method", [CFG(4.0), CSLG(["2"], 2.0, cfg_scale=4.0), PAG(["1"], 2.0, cfg_scale=4.0)],
                         ids=["cfg", "cslg", "pag"])
def test_guider_in_the_modular_pipeline_equals_generate(method):
    """As a guider of diffusers' Z-Image modular pipeline (identity attention found by its hooks: the image tokens of
    the unified sequence from its RoPE positions) a method gives generate's latents."""
    pipe = tiny(NAME)
    blocks = ZImageAutoBlocks()
    blocks.sub_blocks.pop("decode")
    mp = blocks.init_pipeline()
    mp.update_components(**{k: v for k, v in pipe.components.items() if k in mp._component_specs})
    mp.update_components(guider=cslg.diffusers_guider(method, mp))
    out = mp(prompt=PROMPT, negative_prompt=NEG, num_inference_steps=2, height=H, width=W, max_sequence_length=MSL,
             generator=torch.Generator("cpu").manual_seed(SEED), output="latents")
    ref = cslg.generate(pipe, PROMPT, method, negative_prompt=NEG, seed=SEED, steps=2, height=H, width=W,
                        max_sequence_length=MSL, output_type="latent", progress=False).images
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
