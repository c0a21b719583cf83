"""Benchmark: per-step cost of guidance methods relative to CFG, next to the ideal, on small random models.

Two parts; the methods of each family are timed side by side in one run, alternating step by step:

  cslg     CSLG on Qwen-Image and PixArt-Σ (12 blocks; skip block 3 / 6 / 9).
           Ideal (2 + f) / 2 with f = (L - i - 1) / L: the skip pass shares the conditional lane up to block i,
           does not compute the skipped block i, and computes the L - i - 1 blocks after it (as in
           bench_guidance.py). Goal: at most 1.05 x the ideal.
  methods  PAG, APG, CFG-Zero*, skipped-negative SLG on SD3 (12 blocks) and FLUX (12 double + 12 single).
           PAG at block i: ideal (2 + f) / 2 with f = (L - i) / L: the perturbed pass shares the conditional
           lane up to block i and computes block i (with identity attention) and every block after it, so f
           counts the perturbed block, unlike CSLG's skipped one. APG, CFG-Zero*: ideal 1 (two passes, only
           the combination differs). slg-neg with k of L blocks skipped in the unconditional pass: ideal
           (2 - k / L) / 2. Goal: at most 5 % above the ideal.

Ideals count blocks as equally expensive (here FLUX's double- and single-stream blocks take about the same
time) and a lane as costing the same at any batch size (on a CPU, a batch of 3 lanes can take a few percent
more per lane than a batch of 2). Goals are one-sided: cheaper than the ideal is fine. So that this machine
effect can be told apart from the executor's overhead, a "3 lanes" forward (CFG plus an unshared third lane)
is timed as well: its cost over CFG's is what a 3-lane block costs in 2-lane blocks, and "adj. ideal" is the
CSLG / PAG ideal with that cost in place of 1.5.

A step is the sampler's loop body (the batched forward of the passes, the method's combination, the scheduler
step), timed alone. The methods of a family run side by side and alternate step by step, in a rotating order;
step 0 is not counted (CFG-Zero* predicts zero there without a forward). "x cfg" is the median over the steps
of a step's time over that of the CFG step taken next to it (same round and step index), so a drift in machine
speed or load hits both alike; "cfg (again)" is CFG timed as one more method: its distance from 1 is the noise
of the measurement.

The 1-minute load average at the start and end of each family is printed; this benchmark's own threads add
about their number (2 on a 2-core machine) to it, so a load well above that means another process competed.

    python benchmarks/bench_methods.py [--parts cslg methods] [--families ...] [--size 128] [--steps 6] [--rounds 2]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cslg.guidance.executor import Executor  # noqa: E402
from cslg.guidance.passes import Pass  # noqa: E402
from cslg.families import Adapter, adapter_for  # noqa: E402
from cslg.methods import APG, CFG, CSLG, PAG, CFGZeroStar, Method, Request, SkippedNegativeSLG, Step, cfg  # noqa: E402
from cslg.guidance.sampling import prepare  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.pixart import build_tiny_pixart_sigma  # noqa: E402
from cslg.families.qwenimage import build_tiny_qwenimage  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402

SIZE = 128  # image side in pixels (the tiny VAEs compress 2x): 1024 image tokens
STEPS = 6  # per run; step 0 is not counted
ROUNDS = 2
MAX_SEQUENCE_LENGTH = 64
PROMPT = "a storefront with a neon sign that says 'OPEN LATE'"
CFG_SCALE = 7.0
SCALE = 2.8
MODEL = TinySize(double_blocks=12, single_blocks=12, heads=4, head_dim=32, text_dim=64, t5_dim=128, sample_size=64)
BUILD = {"sd3": build_tiny_sd3, "flux": build_tiny_flux, "qwenimage": build_tiny_qwenimage,
         "pixart-sigma": build_tiny_pixart_sigma}
CSLG_FAMILIES = ["qwenimage", "pixart-sigma"]
CSLG_SKIPS = [["3"], ["6"], ["9"]]
METHOD_FAMILIES = ["sd3", "flux"]
PAG_LAYERS = {"sd3": [["3"], ["6"], ["9"]], "flux": [["3"], ["s3"], ["s9"]]}
SLG_NEG_LAYERS = ["7", "8", "9"]
GOAL = {"cslg": 1.05, "pag": 1.05, "apg": 1.05, "cfgzero": 1.05, "slg-neg": 1.05}


@dataclass
class Variant:
    label: str
    method: Method
    ideal: float
    rule: str  # how the ideal was counted
    three_lane_blocks: int | None = None  # CSLG, PAG: blocks run with 3 lanes (the rest with 2)

    def adjusted(self, n_blocks: int, three_lanes: float) -> float | None:
        """The ideal with a 3-lane block costing ``three_lanes`` 2-lane blocks (as measured) instead of 1.5."""
        if self.three_lane_blocks is None:
            return None
        return (n_blocks - self.three_lane_blocks + three_lanes * self.three_lane_blocks) / n_blocks


class ThreeLanes(Method):
    """Calibration: CFG's two lanes and a third, unshared conditional lane (the prompt and a period) through every
    block; its cost over CFG's is what a 3-lane block costs on this machine in units of a 2-lane block."""

    name = "3 lanes"

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt, "cond2": request.prompt + "."}

    def passes(self, step):
        return {name: Pass(name) for name in ("uncond", "cond", "cond2")}

    def combine(self, preds, step):
        return cfg(preds["uncond"], preds["cond"], CFG_SCALE)


def cslg_variants(names: list[str]) -> list[Variant]:
    n, out = len(names), []
    for layers in CSLG_SKIPS:
        first = min(names.index(x) for x in layers)
        f = (n - first - 1) / n
        out.append(Variant(f"cslg skip {','.join(layers)}", CSLG(tuple(layers), SCALE, CFG_SCALE),
                           (2 + f) / 2, f"(2 + {n - first - 1}/{n}) / 2", n - first - 1))
    return out


def method_variants(family: str, names: list[str]) -> list[Variant]:
    n, out = len(names), []
    for layers in PAG_LAYERS[family]:
        first = min(names.index(x) for x in layers)
        f = (n - first) / n
        out.append(Variant(f"pag {','.join(layers)}", PAG(tuple(layers), 3.0, CFG_SCALE), (2 + f) / 2,
                           f"(2 + {n - first}/{n}) / 2", n - first))
    out.append(Variant("apg", APG(CFG_SCALE), 1.0, "1"))
    out.append(Variant("cfgzero", CFGZeroStar(CFG_SCALE), 1.0, "1"))
    k = len(SLG_NEG_LAYERS)
    out.append(Variant(f"slg-neg skip {','.join(SLG_NEG_LAYERS)}", SkippedNegativeSLG(tuple(SLG_NEG_LAYERS), CFG_SCALE),
                       (2 - k / n) / 2, f"(2 - {k}/{n}) / 2"))
    return out


def load() -> str:
    """The 1-minute load average (this benchmark's own threads count too), where the OS tells it."""
    try:
        return Path("/proc/loadavg").read_text().split()[0]
    except OSError:
        return "n/a"


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


class Run:
    """One sampling run of ``method``, a step at a time: the body of ``cslg.guidance.sampling.denoise`` (batched forward of
    the method's passes, its combination with the family's post-processing, the scheduler step) with the run's own
    copy of the scheduler, so runs of several methods can alternate step by step."""

    def __init__(self, adapter: Adapter, method: Method, size: int, steps: int):
        assert not method.recorded_attention(adapter), "attention-recording methods need cslg.guidance.sampling.denoise"
        self.adapter, self.method = adapter, method
        self.run = prepare(adapter, method.conditions(Request(PROMPT)), 0, steps, size, size, MAX_SEQUENCE_LENGTH)
        self.scheduler = copy.deepcopy(adapter.pipe.scheduler)  # its timesteps were just set by prepare
        self.executor = Executor(adapter)
        self.latents = self.run.latents
        self.layout = adapter.layout(self.latents, self.run.extras)
        self.memory: dict = {}

    def step(self, i: int) -> float:
        """Take step ``i``; returns its wall time in seconds."""
        run, n = self.run, len(self.run.timesteps)
        sigmas = getattr(self.scheduler, "sigmas", None)
        start = sync()
        t = run.timesteps[i]
        sigma = float(sigmas[i]) if sigmas is not None and i < len(sigmas) else None
        step = Step(i, n, float(t), sigma, tuple(run.conditions), self.layout, self.memory,
                    postprocess_cfg=self.adapter.postprocess_cfg)
        preds = self.executor.predict(self.latents, t, run.cond, run.conditions, self.method.passes(step), run.extras)
        prediction = self.method.combine(preds, step)
        self.latents = self.scheduler.step(prediction, t, self.latents, return_dict=False)[0]
        return sync() - start


def interleaved(adapter: Adapter, variants: list[Variant], size: int, steps: int, rounds: int) -> dict[str, list[float]]:
    """Seconds per step of each variant: ``rounds`` runs each, steps 1.. alternating between the variants (in an
    order rotated at every step), step 0 taken but not counted. Entry ``j`` of every list comes from the same
    round and step, taken within seconds of each other."""
    times: dict[str, list[float]] = {v.label: [] for v in variants}
    for r in range(-1, rounds):  # round -1: warm-up
        runs = [Run(adapter, v.method, size, steps) for v in variants]
        for i in range(steps if r >= 0 else 2):
            order = list(range(len(variants)))
            shift = (i + max(r, 0)) % len(order)
            for k in order[shift:] + order[:shift]:
                seconds = runs[k].step(i)
                if r >= 0 and i > 0:
                    times[variants[k].label].append(seconds)
    return times


def bench_family(family: str, part: str, size: int, steps: int, rounds: int) -> None:
    pipe = BUILD[family](MODEL).to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    adapter = adapter_for(pipe)
    names = adapter.layer_names
    variants = [Variant("cfg", CFG(CFG_SCALE), 1.0, "1")]
    variants += cslg_variants(names) if part == "cslg" else method_variants(family, names)
    variants.append(Variant("cfg (again)", CFG(CFG_SCALE), 1.0, "1"))  # its distance from 1: the noise
    variants.append(Variant("3 lanes", ThreeLanes(), 1.5, "3 / 2"))  # calibration of the adjusted ideals
    load_start = load()
    times = interleaved(adapter, variants, size, steps, rounds)
    base = times["cfg"]
    ratio = {v.label: statistics.median(x / y for x, y in zip(times[v.label], base)) for v in variants}
    three = ratio["3 lanes"]
    print(f"\n[{family}] {len(names)} blocks, {size}x{size} px, {len(base)} steps per method "
          f"(cfg step {1000 * statistics.median(base):.1f} ms), load {load_start} -> {load()}")
    print(f"  {'method':<20} {'ms/step':>8} {'x cfg':>7} {'ideal':>7} {'/ ideal':>8}  {'ideal rule':<16} {'goal':<8} "
          f"{'adj. ideal':>10} {'/ adj.':>7}")
    for v in variants:
        goal = GOAL.get(v.method.name)
        verdict = "" if goal is None else ("met" if ratio[v.label] / v.ideal <= goal else "MISSED")
        adjusted = v.adjusted(len(names), three)
        extra = "" if adjusted is None else f"{adjusted:10.3f} {ratio[v.label] / adjusted:7.3f}"
        print(f"  {v.label:<20} {1000 * statistics.median(times[v.label]):8.1f} {ratio[v.label]:7.3f} {v.ideal:7.3f} "
              f"{ratio[v.label] / v.ideal:8.3f}  {v.rule:<16} {verdict:<8} {extra}")
    print(f"  goal: at most {max(GOAL.values()):.2f} x the ideal; adj. ideal: the ideal with a 3-lane block costing "
          f"{three:.3f} 2-lane blocks (as the '3 lanes' forward measured) instead of 1.5")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--parts", nargs="+", choices=["cslg", "methods"], default=["cslg", "methods"])
    p.add_argument("--families", nargs="+", choices=list(BUILD), help="only these families (default: all of a part)")
    p.add_argument("--size", type=int, default=SIZE, help="image side in pixels")
    p.add_argument("--steps", type=int, default=STEPS, help="denoising steps per run (step 0 not counted)")
    p.add_argument("--rounds", type=int, default=ROUNDS, help="timed runs per method (after one warm-up)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{MODEL}\n{args.size}x{args.size} px, {args.steps} steps x {args.rounds} rounds (step 0 not counted), "
          f"device {device}")
    for part in args.parts:
        families = CSLG_FAMILIES if part == "cslg" else METHOD_FAMILIES
        for family in families:
            if args.families is None or family in args.families:
                bench_family(family, part, args.size, args.steps, args.rounds)


if __name__ == "__main__":
    main()
