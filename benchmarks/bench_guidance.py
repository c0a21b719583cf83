"""Benchmark: cost of CSLG against CFG, and our SD3 CSLG against diffusers' built-in SLG.

Printed side by side in one run, on small random SD3 and FLUX models (cslg.families' tiny presets, scaled up):
  1. per-step cost of one cslg step (passes [u, c, c_skip] in one branched forward) relative to one
     cfg step ([u, c]), next to the ideal (2 + fraction of blocks after the first skipped one) / 2;
  2. total generation time of our SD3 cslg against StableDiffusion3Pipeline(skip_guidance_layers=...)
     at the same settings (window 0-1 so the skip pass runs at every step); target below 1.0.

The variants of each part alternate round by round (in a rotating order); a ratio is the median over the
rounds of one variant's time over the other's in the same round, so drifts in machine speed or load hit both.

    python benchmarks/bench_guidance.py [--size 64] [--steps 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cslg.guidance.executor import Executor  # noqa: E402
from cslg.families import adapter_for  # noqa: E402
from cslg.methods import CFG, CSLG, Request, Step  # noqa: E402
from cslg.guidance.sampling import prepare, sample  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402

SIZE = 64
STEPS = 8
REPEATS = 7  # whole generations per variant
STEP_ROUNDS = 15  # one-step predictions per variant
CFG_SCALE = 7.0
SCALE = 2.8
PROMPT = "a storefront with a neon sign that says 'OPEN LATE'"
MODEL_SIZE = TinySize(double_blocks=12, single_blocks=12, heads=4, head_dim=32, text_dim=64, t5_dim=128, sample_size=64)
SKIPS = {"sd3": [["3"], ["6"], ["9"], ["3", "9"]], "flux": [["3"], ["9"], ["s3"], ["s9"]]}


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def timed(fn, repeats: int = REPEATS, warmup: bool = True) -> float:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        if device() == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device() == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved(calls: dict, rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls`` (after one warm-up each): ``rounds`` rounds, every call once per round
    in an order rotated each round, so drifts in machine speed or load hit every variant alike."""
    for fn in calls.values():
        fn()  # warm-up
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            times[name].append(timed(calls[name], repeats=1, warmup=False))
    return times


def paired(times: dict[str, list[float]], name: str, base: str) -> float:
    """Median over the rounds of ``name``'s time over ``base``'s in the same round."""
    return statistics.median(a / b for a, b in zip(times[name], times[base]))


def step_costs(pipe, family: str, size: int, steps: int) -> None:
    d = adapter_for(pipe)
    ex = Executor(d)
    run = prepare(d, CFG(CFG_SCALE).conditions(Request(PROMPT)), 0, steps, size, size, 128)
    t = run.timesteps[1]
    step = Step(1, steps, conditions=tuple(run.conditions))
    variants = {"cfg": CFG(CFG_SCALE)} | {",".join(layers): CSLG(tuple(layers), SCALE, CFG_SCALE) for layers in SKIPS[family]}
    for name, method in variants.items():
        assert name == "cfg" or len(method.passes(step)) == 3, "the skip pass must run at the timed step"
    calls = {name: (lambda m=method: ex.predict(run.latents, t, run.cond, run.conditions, m.passes(step), run.extras))
             for name, method in variants.items()}
    times = interleaved(calls, STEP_ROUNDS)
    names = d.layer_names
    print(f"\n[{family}] {len(names)} blocks, {size}x{size}, one step, median of {STEP_ROUNDS} interleaved "
          f"(cfg step: {statistics.median(times['cfg']) * 1000:.1f} ms)")
    print(f"{'skipped layers':>16} {'cslg / cfg':>11} {'ideal':>7} {'diffusers-style ideal':>22}")
    for layers in SKIPS[family]:
        first = min(names.index(name) for name in layers)
        ideal = (2 + (len(names) - first - 1) / len(names)) / 2
        print(f"{','.join(layers):>16} {paired(times, ','.join(layers), 'cfg'):>11.3f} {ideal:>7.3f} {1.5:>22.3f}")


def against_diffusers(pipe, size: int, steps: int) -> None:
    d = adapter_for(pipe)
    layers = [6]
    kw = dict(num_inference_steps=steps, height=size, width=size, max_sequence_length=128, output_type="latent",
              guidance_scale=CFG_SCALE)

    def diffusers_slg():
        pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), skip_guidance_layers=layers,
             skip_layer_guidance_scale=SCALE, skip_layer_guidance_start=0.0, skip_layer_guidance_stop=1.0, **kw)

    def ours_slg():
        sample(d, CSLG(("6",), SCALE, CFG_SCALE, 0.0, 1.0), Request(PROMPT), 0, steps, size, size, 128,
               output_type="latent")

    def diffusers_cfg():
        pipe(PROMPT, generator=torch.Generator("cpu").manual_seed(0), **kw)

    def ours_cfg():
        sample(d, CFG(CFG_SCALE), Request(PROMPT), 0, steps, size, size, 128, output_type="latent")

    runs = {"diffusers SLG": diffusers_slg, "ours cslg": ours_slg, "diffusers CFG": diffusers_cfg, "ours cfg": ours_cfg}
    times = interleaved(runs, REPEATS)
    print(f"\n[sd3] whole generation, {steps} steps, skip layer 6 of 12 at every step, median of {REPEATS} interleaved")
    for name, sec in times.items():
        print(f"{name:>14}: {statistics.median(sec):.3f} s")
    print(f"ours cslg / diffusers SLG = {paired(times, 'ours cslg', 'diffusers SLG'):.3f} (target < 1.0; "
          f"ideal {(2 + 5 / 12) / 3:.3f}); ours cfg / diffusers CFG = {paired(times, 'ours cfg', 'diffusers CFG'):.3f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=SIZE, help="image side in pixels")
    p.add_argument("--steps", type=int, default=STEPS)
    args = p.parse_args()
    print(f"device: {device()}, torch threads: {torch.get_num_threads()}")
    for family, build in (("sd3", build_tiny_sd3), ("flux", build_tiny_flux)):
        pipe = build(MODEL_SIZE).to(device())
        pipe.set_progress_bar_config(disable=True)
        step_costs(pipe, family, args.size, args.steps)
        if family == "sd3":
            against_diffusers(pipe, args.size, args.steps)


if __name__ == "__main__":
    main()
