"""Benchmark: per-step wall time of the baselines S-CFG and ConceptDiffusion relative to CFG.

On randomly initialised SD3 and FLUX transformers scaled up from the tiny presets so that the transformer
dominates (CPU friendly: well under 3 minutes on 2 cores). Each step's time is taken between the
sampler's ``observe(i)`` calls (made as each step starts); the methods alternate in rounds and the median step counts, so a busy
machine hurts all methods alike. Ideal ratios: S-CFG ~1.0 (no extra pass; attention recording on a few
blocks, target within 10 %), ConceptDiffusion (n + 2) / 2 for n concepts (one batched forward of n + 2
lanes against CFG's 2).

    python benchmarks/bench_baselines.py [--families sd3 flux] [--size 128] [--steps 4] [--rounds 2]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cslg.families import Adapter, adapter_for  # noqa: E402
from cslg.methods import CFG, SCFG, ConceptDiffusion, Method, Request  # noqa: E402
from cslg.methods.concept import split_concepts  # noqa: E402
from cslg.guidance.sampling import denoise, prepare  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402

FAMILIES = ["sd3", "flux"]
SIZE = 128  # image side in pixels (the tiny VAE compresses 2x): 32x32 = 1024 image tokens
STEPS = 3
ROUNDS = 2
MAX_SEQUENCE_LENGTH = 64
PROMPT = "a red book and a gold clock"  # two concepts for ConceptDiffusion
CFG_SCALE = 7.5
MODEL = TinySize(double_blocks=8, single_blocks=4, heads=4, head_dim=128, text_dim=64, t5_dim=128, sample_size=64)


def build(family: str) -> Adapter:
    pipe = build_tiny_flux(MODEL) if family == "flux" else build_tiny_sd3(MODEL)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return adapter_for(pipe)


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def step_times(adapter: Adapter, method: Method, size: int, steps: int) -> list[float]:
    """Seconds per denoising step (prediction, combination and scheduler step) of one run."""
    run = prepare(adapter, method.conditions(Request(PROMPT)), 0, steps, size, size, MAX_SEQUENCE_LENGTH)
    stamps: list[float] = []
    # ``observe(i)`` is called as step i starts (it returns no block observer): a time stamp per step
    denoise(adapter, method, run, observe=lambda i: stamps.append(sync()))
    stamps.append(sync())
    return [b - a for a, b in zip(stamps, stamps[1:])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=["sd3", "flux"], default=FAMILIES)
    parser.add_argument("--size", type=int, default=SIZE, help="image side in pixels")
    parser.add_argument("--steps", type=int, default=STEPS, help="denoising steps per run")
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="timed runs per method (after one warm-up)")
    args = parser.parse_args()

    n = len(split_concepts(PROMPT))
    methods = [CFG(CFG_SCALE), SCFG(cfg_scale=CFG_SCALE), ConceptDiffusion(cfg_scale=CFG_SCALE)]
    ideal = {"cfg": 1.0, "scfg": 1.0, "concept": (n + 2) / 2}
    device = "cuda" if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    print(f"{MODEL}\n{args.size}x{args.size} px, {args.steps} steps x {args.rounds} rounds, device {device}, prompt {PROMPT!r} (n = {n})")
    for family in args.families:
        adapter = build(family)
        times: dict[str, list[float]] = {m.name: [] for m in methods}
        for m in methods:
            step_times(adapter, m, args.size, 1)  # warm-up
        for _ in range(args.rounds):
            for m in methods:
                times[m.name] += step_times(adapter, m, args.size, args.steps)
        base = statistics.median(times["cfg"])
        layers = ", ".join(adapter.default_attention_layers())
        print(f"\n{family}: {len(adapter.blocks)} blocks, S-CFG records blocks {layers}")
        print(f"  {'method':<8} {'ms/step':>9} {'x cfg':>7} {'ideal':>7}")
        for m in methods:
            per_step = statistics.median(times[m.name])
            print(f"  {m.name:<8} {1000 * per_step:9.1f} {per_step / base:7.2f} {ideal[m.name]:7.2f}")


if __name__ == "__main__":
    main()
