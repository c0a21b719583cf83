"""APG and CFG-Zero* against diffusers' prediction-space guiders, step by step on the same predictions."""

from __future__ import annotations

import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeZeroStarGuidance

from cslg.methods import APG, CFGZeroStar, Step


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
