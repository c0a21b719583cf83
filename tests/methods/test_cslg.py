"""CSLG and SLG: diffusers' SD3 SLG, the skip formula against skip_blocks, weights, windows, degenerate settings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import CFG, CSLG, SLG, NoGuidance, Request, Step, cfg, in_window, perturbation_term, weighted_mean
from cslg.guidance.sampling import prepare, sample
from cslg.guidance.skip import skip_blocks

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 7
STEPS = 5
TOL = 1 / 255


def _ref(pipe, **kw):
    return pipe(PROMPT, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(SEED), **kw).images[0]


def _ours(pipe, method, guidance=3.5):
    return sample(adapter_for(pipe, guidance), method, Request(PROMPT, NEG), SEED, STEPS, H, W, MSL, output_type="np")


def _one_step(pipe, rows, step_index=1):
    adapter = adapter_for(pipe, 3.5)
    run = prepare(adapter, rows, SEED, STEPS, H, W, MSL)
    return adapter, Executor(adapter), run, run.timesteps[step_index]


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd35"])
@pytest.mark.parametrize("layers,start,stop", [((2,), 0.0, 1.0), ((1, 4), 0.0, 1.0), ((3,), 0.2, 0.7)])
def test_sd3_slg_equals_diffusers_slg(name, layers, start, stop):
    pipe = tiny(name)
    ref = _ref(pipe, negative_prompt=NEG, guidance_scale=6.0, skip_guidance_layers=list(layers),
               skip_layer_guidance_scale=2.5, skip_layer_guidance_start=start, skip_layer_guidance_stop=stop)
    ours = _ours(pipe, SLG(tuple(map(str, layers)), 2.5, 6.0, start, stop))
    assert np.abs(ref - ours).max() <= TOL
    plain_cfg = _ours(pipe, CFG(6.0))
    assert np.abs(plain_cfg - ours).max() > TOL, "the skip term changed nothing: the test could not fail"


def test_flux_cslg_equals_skip_context_formula(flux_pipe):
    """FLUX has no diffusers SLG: compare one step against separate forward passes with skip_blocks."""
    adapter, ex, run, t = _one_step(flux_pipe, {"cond": PROMPT})
    method = CSLG(("2", "s1"), 1.5, 1.0)
    step = Step(1, STEPS)
    ours = method.combine(ex.predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras), step)
    c = ex.predict(run.latents, t, run.cond, run.conditions, {"cond": Pass("cond")}, run.extras)["cond"]
    with skip_blocks(flux_pipe, ["2", "s1"]):
        c_skip = ex.predict(run.latents, t, run.cond, run.conditions, {"cond": Pass("cond")}, run.extras)["cond"]
    assert torch.allclose(ours, c + 1.5 * (c - c_skip), atol=1e-5)
    assert not torch.allclose(c, c_skip, atol=1e-4)


def test_weighted_multi_layer_skip():
    c = torch.ones(1, 2)
    skips = [torch.zeros(1, 2), torch.full((1, 2), 3.0)]
    assert torch.allclose(weighted_mean(skips, [3.0, 1.0]), torch.full((1, 2), 0.75))
    m = CSLG((1, "2"), scale=2.0, cfg_scale=5.0, weights=(3.0, 1.0))
    assert m.passes(Step(2, 4)) == {"uncond": Pass("uncond"), "cond": Pass("cond"),
                                    "cond_perturbed0": Pass.of("cond", skip=["1"]), "cond_perturbed1": Pass.of("cond", skip=["2"])}
    u = torch.zeros(1, 2)
    v = m.combine({"uncond": u, "cond": c, "cond_perturbed0": skips[0], "cond_perturbed1": skips[1]}, Step(2, 4))
    assert torch.allclose(v, cfg(u, c, 5.0) + perturbation_term(c, weighted_mean(skips, [3.0, 1.0]), 2.0))


def test_window_and_cfg_free_variant():
    assert [in_window(i, 10, 0.01, 0.2, "strict") for i in range(4)] == [False, True, False, False]  # as diffusers
    m = CSLG(("1",), scale=1.0, cfg_scale=1.0)  # w = 1: no unconditional pass, v = c + s (c - c_skip)
    assert m.conditions(Request("p", "n")) == {"cond": "p"}
    c, cs = torch.full((1, 1), 2.0), torch.full((1, 1), 0.5)
    assert torch.allclose(m.combine({"cond": c, "cond_perturbed0": cs}, Step(0, 1)), torch.full((1, 1), 3.5))


def test_bad_method_settings():
    with pytest.raises(ValueError, match="weights"):
        CSLG(("1", "2"), 1.0, weights=(1.0,))
    with pytest.raises(ValueError, match="start <= stop"):
        CSLG(("1",), 1.0, start=0.5, stop=0.2)
    with pytest.raises(ValueError, match="no layers"):
        CSLG((), 1.0)


def test_slg_without_cfg_is_no_guidance_as_diffusers(sd3_pipe):
    """diffusers applies skip-layer guidance only with CFG (w > 1): below that, no guidance at all."""
    ref = _ref(sd3_pipe, guidance_scale=0.5, skip_guidance_layers=[2], skip_layer_guidance_scale=2.5,
               skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0)
    with pytest.warns(UserWarning, match="diffusers applies no guidance"):
        ours = _ours(sd3_pipe, SLG(("2",), 2.5, 0.5, 0.0, 1.0))
    assert np.abs(ref - ours).max() <= TOL
    assert np.abs(ours - _ours(sd3_pipe, NoGuidance())).max() <= TOL


def test_windows_and_rounding():
    assert [in_window(i, 4, 0.0, 1.0, "strict") for i in range(4)] == [False, True, True, True]  # diffusers: never 0
    assert [in_window(i, 4, 0.0, 1.0) for i in range(4)] == [True, True, True, True]  # cslg "0-1": every step
    assert in_window(15, 22, 15 / 22, 1.0) and not in_window(14, 22, 15 / 22, 1.0)  # 22 * 15/22 is 15, not 14.99..
    assert not in_window(15, 22, 15 / 22, 1.0, "strict") and in_window(16, 22, 15 / 22, 1.0, "strict")
    assert [in_window(i, 10, 0.25, 0.75, "floor") for i in (1, 2, 7)] == [False, True, False]  # int(2.5) = 2
    assert [in_window(i, 10, 0.2, 0.5, "closed") for i in (1, 2, 5, 6)] == [False, True, True, False]
    with pytest.raises(ValueError, match="window rule"):
        in_window(0, 4, 0, 1, "open")
    assert CSLG(("1",), 1.0, 1.0).passes(Step(0, 4)).keys() == {"cond", "cond_perturbed0"}
    assert SLG(("1",), 1.0, 5.0).passes(Step(0, 4)).keys() == {"uncond", "cond"}


@pytest.mark.parametrize("method,steps,rows,reason", [
    (SLG(cfg_scale=7.0), 4, {}, "window 0.01-0.2 holds no step of 4: equals cfg"),
    (SLG(cfg_scale=1.0), 28, {}, "no guidance at all"),
    (CSLG(("1",), 0.0, 4.0), 28, {}, "scale 0: equals cfg"),
    (CSLG(("1",), 1.0, 1.0, start=0.5, stop=0.5), 28, {}, "holds no step"),
    (CFG(1.0), 28, {}, "equals none"),
])
def test_degenerate_settings_are_named(method, steps, rows, reason):
    assert reason in method.degenerate(steps, rows)


def test_sensible_settings_are_not_degenerate():
    assert SLG(cfg_scale=7.0).degenerate(28, {}) is None
    assert CSLG(("1",), 1.0, 1.0).degenerate(4, {}) is None
    assert CFG(4.0).degenerate(4, {}) is None
