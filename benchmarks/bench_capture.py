"""Benchmark: activation capture against a plain generation of the same pair.

  capture   - the pair denoised together, cosine hooks on every block (cslg.capture.capture_pair)
  plain     - the same batched pair through the same loop, no hooks
  diffusers - the pipeline's own call for the pair (prompt=[a, b], the same noise for both)

Wall time: median of interleaved repeats in this process (so load drifts hit every mode alike).
Peak memory: one run per mode in a fresh subprocess (GPU: max allocated; CPU: peak resident set size),
at two step counts, to show that capture memory does not grow with the number of steps.
Targets: capture overhead <= 15% of plain; flat memory.

    python benchmarks/bench_capture.py [--family flux|sd3] [--size 64] [--steps 4 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cslg.capture import CaptureConfig, PairTrajectory, capture_pair  # noqa: E402
from cslg.families import adapter_for  # noqa: E402
from cslg.prompts import PromptPair  # noqa: E402
from cslg.guidance.sampling import denoise, prepare  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402

FAMILY = "flux"
SIZE = 64  # image side in pixels (the tiny VAE compresses 2x)
STEPS = [4, 16]
REPEATS = 5
MODES = ("plain", "capture", "diffusers")
MODEL_SIZE = TinySize(double_blocks=6, single_blocks=6, heads=4, head_dim=32, text_dim=64, t5_dim=128, sample_size=64)
PAIR = PromptPair("a brown dog sitting on a sidewalk", "a brown dog sitting on a sidewalk, wearing a tag that says 'buddy'")
MSL = 128


def runner(family: str, size: int, steps: int):
    """``{mode: zero-argument callable}`` on one small random model."""
    pipe = (build_tiny_flux if family == "flux" else build_tiny_sd3)(MODEL_SIZE)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    guidance = 3.5 if family == "flux" else 7.0
    d = adapter_for(pipe, guidance if family == "flux" else None)
    config = CaptureConfig("bench", "-", 1, steps, 0, size, size, guidance, MSL)

    def plain():
        method = PairTrajectory("independent", None if d.has_distilled_guidance else guidance)
        run = prepare(d, method.conditions(PAIR), 0, steps, size, size, MSL)
        denoise(d, method, run, run.latents.repeat(2, *[1] * (run.latents.ndim - 1)))

    def diffusers():
        pipe([PAIR.negative, PAIR.positive], num_inference_steps=steps, height=size, width=size, guidance_scale=guidance,
             generator=[torch.Generator("cpu").manual_seed(0) for _ in range(2)], max_sequence_length=MSL,
             output_type="latent")

    return {"plain": plain, "capture": lambda: capture_pair(d, PAIR, config), "diffusers": diffusers}


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_memory_mb(mode: str, family: str, size: int, steps: int) -> float:
    """Peak memory of one run of ``mode`` (called in a fresh subprocess)."""
    runner(family, size, steps)[mode]()
    sync()
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return peak / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["flux", "sd3"], default=FAMILY)
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--memory-of", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        print(json.dumps(peak_memory_mb(args.memory_of[0], args.family, args.size, int(args.memory_of[1]))))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"capture benchmark: {args.family}, {args.size}x{args.size}, {device}, median of {REPEATS} interleaved runs")
    print(f"{'steps':>5} {'mode':>9} {'seconds':>9} {'peak MB':>9} {'time / plain':>13} {'time / diffusers':>17}")
    seconds, memory = {}, {}
    for steps in args.steps:
        runs = runner(args.family, args.size, steps)
        times = {mode: [] for mode in MODES}
        for fn in runs.values():
            fn()  # warm-up
        for _ in range(REPEATS):
            for mode, fn in runs.items():
                sync()
                start = time.perf_counter()
                fn()
                sync()
                times[mode].append(time.perf_counter() - start)
        for mode in MODES:
            seconds[steps, mode] = statistics.median(times[mode])
            cmd = [sys.executable, __file__, "--family", args.family, "--size", str(args.size), "--memory-of", mode, str(steps)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            memory[steps, mode] = float(out.strip().splitlines()[-1])
        for mode in MODES:
            print(f"{steps:>5} {mode:>9} {seconds[steps, mode]:>9.3f} {memory[steps, mode]:>9.1f} "
                  f"{seconds[steps, mode] / seconds[steps, 'plain']:>13.3f} "
                  f"{seconds[steps, mode] / seconds[steps, 'diffusers']:>17.3f}")
    lo, hi = min(args.steps), max(args.steps)
    print("capture overhead vs plain: " + ", ".join(
        f"{s} steps {100 * (seconds[s, 'capture'] / seconds[s, 'plain'] - 1):+.1f}%" for s in args.steps)
        + " (target <= +15%)")
    print(f"peak memory {lo} -> {hi} steps: capture {memory[lo, 'capture']:.1f} -> {memory[hi, 'capture']:.1f} MB, "
          f"plain {memory[lo, 'plain']:.1f} -> {memory[hi, 'plain']:.1f} MB")


if __name__ == "__main__":
    main()
