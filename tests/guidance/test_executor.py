"""The executor: passes share a lane up to the block where they differ; skipped blocks are not computed."""

from __future__ import annotations


from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.guidance.sampling import prepare

from ..helpers import H, MSL, W

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 7
STEPS = 5


def _one_step(pipe, rows, step_index=1):
    adapter = adapter_for(pipe, 3.5)
    run = prepare(adapter, rows, SEED, STEPS, H, W, MSL)
    return adapter, Executor(adapter), run, run.timesteps[step_index]


def test_skip_prefix_is_shared_and_skipped_blocks_not_computed(sd3_pipe):
    adapter, ex, run, t = _one_step(sd3_pipe, {"uncond": NEG, "cond": PROMPT}, 0)
    rows = []
    handles = [b.register_forward_pre_hook(lambda m, a, kw: rows.append(kw["hidden_states"].shape[0]), with_kwargs=True)
               for _, b, _ in adapter.blocks]
    u, c = Pass("uncond"), Pass("cond")
    try:
        ex.predict(run.latents, t, run.cond, run.conditions, {"u": u, "c": c, "c3": Pass.of("cond", skip=["3"])}, run.extras)
        assert rows == [2, 2, 2, 2, 3, 3]  # block 3 runs on [u, c] only, later blocks on [u, c, c_skip]
        rows.clear()
        ex.predict(run.latents, t, run.cond, run.conditions,
                   {"u": u, "c": c, "c1": Pass.of("cond", skip=["1"]), "c4": Pass.of("cond", skip=["4"])}, run.extras)
        assert rows == [2, 2, 3, 3, 3, 4]  # split at block 1 (skipped by one lane), again at block 4
    finally:
        for h in handles:
            h.remove()
