"""Benchmark: one step of the ablation finder (the negative and positive predictions and the positive one with each of
the L blocks skipped) against its ideal cost and against running the passes one by one.

  shared     - every pass in one forward, the skipped passes sharing their prefix with the positive pass
  capped     - the same with --max-lanes (several forwards, each repeating its own prefix)
  one-by-one - each of the L + 2 passes in its own forward (upstream's layer search)
  forward    - one plain forward; the ideal of a step is (2 + (L - 1) / 2) forwards: the two unperturbed passes, and
               the skipped pass of block l costs the L - 1 - l blocks after it

Wall time: median of interleaved repeats in this process (so load drifts hit every mode alike). Peak memory: one run
per mode in a fresh subprocess, above what the loaded model holds (GPU: max allocated; CPU: the peak resident set size
of the step, Linux's VmHWM reset before it, minus the resident size before it). CPU runs use one thread.

    python benchmarks/bench_finders.py [--model tiny|medium] [--family flux|sd3] [--size 64] [--max-lanes 8]
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from cslg.capture.finders import ProbeTrajectory  # noqa: E402
from cslg.families import adapter_for  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402
from cslg.guidance.executor import Executor  # noqa: E402
from cslg.guidance.sampling import prepare  # noqa: E402
from cslg.methods import Step  # noqa: E402
from cslg.prompts import PromptPair  # noqa: E402

SIZES = {
    "tiny": TinySize(),
    "medium": TinySize(double_blocks=8, single_blocks=16, heads=4, head_dim=32, text_dim=64, t5_dim=128,
                       sample_size=64),
}
REPEATS = 5
MODES = ("forward", "shared", "capped", "one-by-one")
PAIR = PromptPair("a brown dog sitting on a sidewalk", "a brown dog sitting on a sidewalk, wearing a tag that says 'buddy'")
MSL = 64


def runner(model: str, family: str, size: int, max_lanes: int):
    """``({mode: zero-argument callable}, number of blocks)`` for one step on one small random model."""
    pipe = (build_tiny_flux if family == "flux" else build_tiny_sd3)(SIZES[model])
    pipe.to("cuda" if torch.cuda.is_available() else "cpu")
    adapter = adapter_for(pipe, 3.5)
    method = ProbeTrajectory(finder="ablation", layers=tuple(adapter.layer_names))  # no CFG: the 2 + L passes
    run = prepare(adapter, method.conditions(PAIR), 0, 4, size, size, MSL)
    passes = method.passes(Step(0, 4))
    t = run.timesteps[0]

    def predict(executor: Executor, chosen: dict):
        return executor.predict(run.latents, t, run.cond, run.conditions, chosen, run.extras)

    one, capped = Executor(adapter), Executor(adapter, max_lanes)
    modes = {
        "forward": lambda: predict(one, {"b": passes["b"]}),
        "shared": lambda: predict(one, passes),
        "capped": lambda: predict(capped, passes),
        "one-by-one": lambda: [predict(one, {name: p}) for name, p in passes.items()],
    }
    return modes, len(adapter.layer_names)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def resident_bytes() -> int:
    """The resident set size of this process now (Linux)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize()


def peak_resident_bytes() -> int:
    """The peak resident set size since the last ``reset_peak_resident`` (Linux's VmHWM)."""
    return int(re.search(r"VmHWM:\s+(\d+) kB", Path("/proc/self/status").read_text()).group(1)) * 1024


def reset_peak_resident() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident size


def peak_memory_mb(mode: str, model: str, family: str, size: int, max_lanes: int) -> float:
    """Peak memory of one run of ``mode`` above the loaded model (called in a fresh subprocess)."""
    modes, _ = runner(model, family, size, max_lanes)
    if torch.cuda.is_available():
        sync()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        modes[mode]()
        sync()
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    reset_peak_resident()
    before = resident_bytes()
    modes[mode]()
    return max(0, peak_resident_bytes() - before) / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", choices=list(SIZES), default="tiny")
    p.add_argument("--family", choices=["flux", "sd3"], default="flux")
    p.add_argument("--size", type=int, default=64, help="image side in pixels (the tiny VAE compresses 2x)")
    p.add_argument("--max-lanes", type=int, default=4, help="the lane cap of the 'capped' mode")
    p.add_argument("--memory-of", metavar="MODE", help=argparse.SUPPRESS)
    args = p.parse_args()
    if not torch.cuda.is_available():
        torch.set_num_threads(1)
    if args.memory_of:
        print(json.dumps(peak_memory_mb(args.memory_of, args.model, args.family, args.size, args.max_lanes)))
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    modes, blocks = runner(args.model, args.family, args.size, args.max_lanes)
    print(f"ablation finder, one step: {args.family} {args.model} ({blocks} blocks), {args.size}x{args.size}, {device}, "
          f"max lanes {args.max_lanes}, median of {REPEATS} interleaved runs")
    for fn in modes.values():
        fn()  # warm-up
    times = {mode: [] for mode in MODES}
    for _ in range(REPEATS):
        for mode, fn in modes.items():
            sync()
            start = time.perf_counter()
            fn()
            sync()
            times[mode].append(time.perf_counter() - start)
    seconds = {mode: statistics.median(times[mode]) for mode in MODES}
    memory = {}
    for mode in MODES:
        cmd = [sys.executable, __file__, "--model", args.model, "--family", args.family, "--size", str(args.size),
               "--max-lanes", str(args.max_lanes), "--memory-of", mode]
        memory[mode] = float(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.split()[-1])
    ideal_forwards = 2 + (blocks - 1) / 2
    print(f"{'mode':>10} {'seconds':>9} {'forwards':>9} {'peak MB above the model':>24}")
    for mode in MODES:
        print(f"{mode:>10} {seconds[mode]:>9.4f} {seconds[mode] / seconds['forward']:>9.2f} {memory[mode]:>24.1f}")
    print(f"shared: {seconds['shared'] / seconds['forward']:.2f} forwards per step against the ideal "
          f"{ideal_forwards:.1f} (2 + (L-1)/2) and {blocks + 2} one by one; "
          f"{seconds['one-by-one'] / seconds['shared']:.2f}x faster than one by one")
    print(f"capped at {args.max_lanes} lanes: {seconds['capped'] / seconds['shared']:.2f}x the time of shared, peak "
          f"memory {memory['capped']:.1f} MB against {memory['shared']:.1f} MB uncapped")


if __name__ == "__main__":
    main()
