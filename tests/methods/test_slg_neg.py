"""Skipped-negative SLG: CFG against the negative pass with the blocks skipped."""

from __future__ import annotations

import torch

from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import SkippedNegativeSLG, Step
from cslg.guidance.sampling import prepare
from cslg.guidance.skip import skip_blocks

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 5
STEPS = 4


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
