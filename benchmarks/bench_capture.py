"""Benchmark: activation capture against a plain generation of the same pair.

Each measurement runs in a fresh subprocess (so peak memory is its own): wall time and peak memory
(GPU: max allocated; CPU: peak resident set size) of
  capture  - the pair denoised together with cosine hooks on every block (cslg.capture.capture_pair)
  plain    - the same batched pair through the same loop, no hooks
  diffusers- the pipeline's own call for the pair (prompt=[a, b], the same noise for both)
at two step counts, to show the overhead (target <= 15%) and that memory does not grow with steps.

    python benchmarks/bench_capture.py [--family flux|sd3] [--size 128] [--steps 4 16]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FAMILY = "flux"
SIZE = 64  # image side in pixels (the tiny VAE compresses 2x)
STEPS = [4, 16]
REPEATS = 3
PAIR = ("a brown dog sitting on a sidewalk", "a brown dog sitting on a sidewalk, wearing a tag that says 'buddy'")


def build(family: str):
    import torch

    from cslg.tiny import TinySize, build_tiny_flux, build_tiny_sd3

    size = TinySize(double_blocks=6, single_blocks=6, heads=4, head_dim=32, text_dim=64, t5_dim=128, sample_size=64)
    pipe = build_tiny_flux(size) if family == "flux" else build_tiny_sd3(size)
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


def measure(mode: str, family: str, size: int, steps: int) -> dict:
    import torch

    from cslg.capture import CaptureConfig, PairTrajectory, capture_pair
    from cslg.denoiser import make_denoiser
    from cslg.prompts import PromptPair
    from cslg.sampling import denoise

    pipe = build(family)
    d = make_denoiser(pipe)
    pair = PromptPair(*PAIR)
    guidance = 3.5 if family == "flux" else 7.0
    config = CaptureConfig("bench", "-", 1, steps, 0, size, size, guidance, 128)

    def run():
        if mode == "capture":
            capture_pair(d, pair, config)
        elif mode == "plain":
            method = PairTrajectory("independent", guidance if family == "sd3" else None)
            cond = d.encode(method.rows(pair), 128)
            noise = d.initial_noise(0, size, size)
            denoise(d, method, cond, noise.repeat(2, *[1] * (noise.ndim - 1)), d.timesteps(steps, noise))
        else:
            gens = [torch.Generator("cpu").manual_seed(0) for _ in range(2)]
            kw = {"guidance_scale": guidance} if family == "sd3" else {"guidance_scale": guidance}
            pipe(list(PAIR), num_inference_steps=steps, height=size, width=size, generator=gens,
                 max_sequence_length=128, output_type="latent", **kw)

    run()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        run()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated() if torch.cuda.is_available()
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    return {"mode": mode, "steps": steps, "seconds": min(times), "peak_mb": peak / 2**20,
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", choices=["flux", "sd3"], default=FAMILY)
    p.add_argument("--size", type=int, default=SIZE)
    p.add_argument("--steps", type=int, nargs="+", default=STEPS)
    p.add_argument("--single", nargs=2, metavar=("MODE", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.single:
        print(json.dumps(measure(args.single[0], args.family, args.size, int(args.single[1]))))
        return
    rows = []
    for steps in args.steps:
        for mode in ("plain", "capture", "diffusers"):
            cmd = [sys.executable, __file__, "--family", args.family, "--size", str(args.size), "--single", mode, str(steps)]
            rows.append(json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]))
    print(f"capture benchmark: {args.family}, {args.size}x{args.size}, device {rows[0]['device']}, best of {REPEATS}")
    print(f"{'steps':>5} {'mode':>9} {'seconds':>9} {'peak MB':>9} {'time vs plain':>14} {'time vs diffusers':>18}")
    for steps in args.steps:
        r = {row["mode"]: row for row in rows if row["steps"] == steps}
        for mode in ("plain", "capture", "diffusers"):
            x = r[mode]
            print(f"{steps:>5} {mode:>9} {x['seconds']:>9.3f} {x['peak_mb']:>9.1f} "
                  f"{x['seconds'] / r['plain']['seconds']:>14.3f} {x['seconds'] / r['diffusers']['seconds']:>18.3f}")
    cap = {row["steps"]: row for row in rows if row["mode"] == "capture"}
    plain = {row["steps"]: row for row in rows if row["mode"] == "plain"}
    lo, hi = min(args.steps), max(args.steps)
    print(f"capture overhead vs plain: " + ", ".join(
        f"{s} steps {100 * (cap[s]['seconds'] / plain[s]['seconds'] - 1):+.1f}%" for s in args.steps) + " (target <= +15%)")
    print(f"capture peak memory {lo} -> {hi} steps: {cap[lo]['peak_mb']:.1f} -> {cap[hi]['peak_mb']:.1f} MB "
          f"(plain: {plain[lo]['peak_mb']:.1f} -> {plain[hi]['peak_mb']:.1f} MB)")


if __name__ == "__main__":
    main()
