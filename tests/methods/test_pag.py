"""PAG against diffusers' PAG pipelines and a naive identity-masked attention forward."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import PixArtSigmaPAGPipeline, StableDiffusion3PAGPipeline
from diffusers.models.transformers import transformer_flux, transformer_qwenimage

import cslg
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import CFG, PAG
from cslg.guidance.sampling import prepare

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 5
STEPS = 4
TOL = 1 / 255


def _generate(name, method):
    return cslg.generate(tiny(name), PROMPT, method, seed=SEED, steps=STEPS, height=H, width=W, negative_prompt=NEG,
                         max_sequence_length=MSL, output_type="np", progress=False).images[0]


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
