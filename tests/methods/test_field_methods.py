"""PAG, APG, CFG-Zero* and skipped-negative SLG against diffusers' references on the tiny models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PixArtSigmaPAGPipeline, StableDiffusion3PAGPipeline
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance
from diffusers.models.transformers import transformer_flux, transformer_qwenimage

import cslg
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import APG, CFG, PAG, CFGZeroStar, SkippedNegativeSLG, Step
from cslg.guidance.sampling import prepare
from cslg.guidance.skip import skip_blocks

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 5
STEPS = 4
TOL = 1 / 255


def _generate(name, method):
    return cslg.generate(tiny(name), PROMPT, method, seed=SEED, steps=STEPS, height=H, width=W, negative_prompt=NEG,
                         max_sequence_length=MSL, output_type="np", progress=False)


@pytest.mark.parametrize("name,pipeline_cls", [("tiny-sd3", StableDiffusion3PAGPipeline),
                                               ("tiny-pixart-sigma", PixArtSigmaPAGPipeline)])
def test_pag_equals_diffusers_pag_pipeline(name, pipeline_cls):
    ref_pipe = pipeline_cls.from_pipe(tiny(name), pag_applied_layers=["blocks.1"])
    ref_pipe.set_progress_bar_config(disable=True)
    extra = {"use_resolution_binning": False, "clean_caption": False} if name == "tiny-pixart-sigma" else {}
    ref = ref_pipe(PROMPT, negative_prompt=NEG, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL,
                   guidance_scale=4.0, pag_scale=2.0, output_type="np", generator=torch.Generator("cpu").manual_seed(SEED),
                   **extra).images[0]
    ours = _generate(name, PAG(["1"], 2.0, cfg_scale=4.0))
    assert np.abs(ref - ours).max() <= TOL
    assert np.abs(_generate(name, CFG(4.0)) - ours).max() > TOL, "PAG gave the CFG image: the test could not fail"


def _naive_identity_dispatch(n_image: int, text_first: bool):
    """An explicit-softmax attention kernel (diffusers' ``[B, L, H, d]`` layout) in which image queries see only
    themselves among the image keys."""

    def kernel(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **_):
        q, k, v = (x.transpose(1, 2).float() for x in (query, key, value))
        length = k.shape[2]
        image = slice(length - n_image, length) if text_first else slice(0, n_image)
        logits = q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5
        block = torch.full((n_image, n_image), float("-inf")).fill_diagonal_(0.0)
        logits[..., image, image] = logits[..., image, image] + block
        if attn_mask is not None:
            logits = logits.masked_fill(~attn_mask, float("-inf")) if attn_mask.dtype == torch.bool else logits + attn_mask
        return (logits.softmax(-1) @ v).transpose(1, 2).to(query.dtype)

    return kernel


@pytest.mark.parametrize("name,module,layers", [("tiny-flux", transformer_flux, ["1"]),
                                                ("tiny-flux", transformer_flux, ["s2"]),
                                                ("tiny-qwenimage", transformer_qwenimage, ["1", "3"])])
def test_identity_attention_equals_naive_masked_forward(name, module, layers, monkeypatch):
    """No diffusers reference: the perturbed pass equals our forward in which the chosen blocks' attention is an
    explicit softmax with the identity mask (patched at diffusers' dispatch, not at SDPA)."""
    pipe = tiny(name)
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    executor = Executor(adapter)
    preds = executor.predict(run.latents, t, run.cond, run.conditions,
                             {"c": Pass("cond"), "ptb": Pass.of("cond", identity_attention=layers)}, run.extras)
    n_image = run.latents.shape[1]
    original = module.dispatch_attention_fn
    active = []
    monkeypatch.setattr(module, "dispatch_attention_fn", lambda *a, **kw: (
        _naive_identity_dispatch(n_image, True)(*a, **kw) if active else original(*a, **kw)))
    hooks = []
    for layer in layers:
        block = adapter.block(layer)
        hooks.append(block.register_forward_pre_hook(lambda m, a: active.append(1) and None))
        hooks.append(block.register_forward_hook(lambda m, a, o: active.pop() and None))
    try:
        ref = executor.predict(run.latents, t, run.cond, run.conditions, {"c": Pass("cond")}, run.extras)["c"]
    finally:
        for hook in hooks:
            hook.remove()
    torch.testing.assert_close(preds["ptb"], ref, atol=1e-5, rtol=1e-4)
    assert (preds["c"] - preds["ptb"]).abs().max() > 1e-3, "identity attention changed nothing"


def _guider_run(guider, preds_per_step):
    guider.set_state(step=0, num_inference_steps=len(preds_per_step), timestep=torch.tensor(1.0))
    guider.prepare_inputs({"x": (torch.zeros(1), torch.zeros(1))})  # step 0 creates APG's momentum buffer
    out = []
    for i, (c, u) in enumerate(preds_per_step):
        guider.set_state(step=i, num_inference_steps=len(preds_per_step), timestep=torch.tensor(1.0))
        out.append(guider.forward(c, u).pred)
    return out


def _ours_run(method, preds_per_step):
    memory, out = {}, []
    for i, (c, u) in enumerate(preds_per_step):
        step = Step(i, len(preds_per_step), memory=memory)
        passes = method.passes(step)
        out.append(method.combine({name: {"cond": c, "uncond": u}[p.condition] for name, p in passes.items()}, step))
    return out


def _predictions(shape, steps=5):
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(shape, generator=g), torch.randn(shape, generator=g)) for _ in range(steps)]


@pytest.mark.parametrize("shape", [(1, 4, 8, 8), (1, 16, 64)])
@pytest.mark.parametrize("momentum,eta,threshold", [(None, 1.0, 15.0), (-0.5, 0.0, 15.0), (0.3, 0.5, 2.0), (-0.5, 1.0, 0.0)])
def test_apg_equals_diffusers_guider(shape, momentum, eta, threshold):
    preds = _predictions(shape)
    guider = AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=momentum,
                                       adaptive_projected_guidance_rescale=threshold, eta=eta)
    for ref, ours in zip(_guider_run(guider, preds), _ours_run(APG(5.0, eta, threshold, momentum), preds), strict=True):
        torch.testing.assert_close(ours, ref, atol=1e-6, rtol=1e-6)
    cfg = [u + 5.0 * (c - u) for c, u in preds]
    assert max((a - b).abs().max() for a, b in zip(_ours_run(APG(5.0, eta, threshold, momentum), preds), cfg)) > 1e-3


@pytest.mark.parametrize("zero_init_steps", [0, 1, 2])
def test_cfgzero_equals_diffusers_guider(zero_init_steps):
    preds = _predictions((1, 4, 8, 8))
    guider = ClassifierFreeZeroStarGuidance(guidance_scale=4.0, zero_init_steps=zero_init_steps)
    ours = _ours_run(CFGZeroStar(4.0, zero_init_steps), preds)
    for ref, x in zip(_guider_run(guider, preds), ours, strict=True):
        torch.testing.assert_close(x, ref, atol=1e-6, rtol=1e-6)
    assert all(torch.count_nonzero(x) == 0 for x in ours[:zero_init_steps])
    c, u = preds[-1]
    assert (ours[-1] - (u + 4.0 * (c - u))).abs().max() > 1e-3, "CFG-Zero* equals CFG: the test could not fail"


def test_skipped_negative_slg_is_cfg_against_the_skipped_negative():
    pipe = tiny("tiny-flux")
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"uncond": NEG, "cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    method = SkippedNegativeSLG(["2", "s1"], 3.0)
    step = Step(1, STEPS)
    executor = Executor(adapter)
    ours = method.combine(executor.predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras), step)
    c = executor.predict(run.latents, t, run.cond, run.conditions, {"cond": Pass("cond")}, run.extras)["cond"]
    with skip_blocks(pipe, ["2", "s1"]):
        u_skip = executor.predict(run.latents, t, run.cond, run.conditions, {"u": Pass("uncond")}, run.extras)["u"]
    torch.testing.assert_close(ours, u_skip + 3.0 * (c - u_skip), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-qwenimage", "tiny-pixart-sigma"])
def test_every_field_method_changes_the_image(name):
    cfg = _generate(name, CFG(4.0))
    for method in (PAG(["1"], 2.0, 4.0), APG(4.0, eta=0.0, norm_threshold=1.0, momentum=-0.5), CFGZeroStar(4.0),
                   SkippedNegativeSLG(["1"], 4.0)):
        image = _generate(name, method)
        assert np.isfinite(image).all(), f"{method.name} on {name}: non-finite image"
        # Well above float noise (~1e-6): Qwen-Image's per-token norm rescale keeps tiny-model changes small
        assert np.abs(image - cfg).max() > 1e-3, f"{method.name} on {name} gave the CFG image"
