"""Run one benchmark script from two checkouts alternately in this session; print their numbers side by side.

For a before/after check of a change (no regression): make a throwaway worktree of the old revision, run

    git worktree add /tmp/cslg_before <old commit>
    python benchmarks/compare_revisions.py /tmp/cslg_before benchmarks/bench_guidance.py --runs 2 [-- --steps 8]
    git worktree remove --force /tmp/cslg_before

Each run is a subprocess with this interpreter, ``PYTHONPATH`` and working directory set to its checkout, in
the order before, after, before, after, ... with the same arguments (after ``--``), so drifts in machine load
hit both alike. Before each run the 1-minute load average is checked: above ``--max-load`` it waits (up to
``--max-wait`` seconds in all) and the load at the start of every run is printed. Lines of output that have the
same text in every run, numbers aside, are printed once with every number that differs between runs shown as
``[before runs | after runs]``.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

NUMBER = re.compile(r"-?\d+(?:\.\d+)?")
ROOT = Path(__file__).resolve().parents[1]


def load() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except OSError:  # not Linux
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def wait_for_quiet(max_load: float, budget: list[float]) -> float:
    """The 1-minute load, after waiting (out of ``budget[0]`` seconds) while it is above ``max_load``."""
    while load() > max_load and budget[0] > 0:
        pause = min(30.0, budget[0])
        print(f"  load {load():.2f} > {max_load}: waiting {pause:.0f} s", flush=True)
        time.sleep(pause)
        budget[0] -= pause
    return load()


def run(tree: Path, script: str, args: list[str]) -> str:
    env = dict(os.environ, PYTHONPATH=str(tree))
    out = subprocess.run([sys.executable, str(tree / script), *args], cwd=tree, env=env, capture_output=True,
                         text=True, check=False)
    if out.returncode:
        sys.exit(f"{tree / script} failed ({out.returncode}):\n{out.stderr[-4000:]}")
    return out.stdout


def merged(before: list[str], after: list[str]) -> list[str]:
    """Every line of the first run with differing numbers replaced by ``[before runs | after runs]``."""
    runs = [o.splitlines() for o in before + after]
    lines = []
    for i, line in enumerate(runs[0]):
        template = NUMBER.sub("#", line)
        others = [r[i] if i < len(r) else "" for r in runs]
        if any(NUMBER.sub("#", o) != template for o in others):
            lines.append(line + "    (differs between runs: " + " || ".join(o.strip() for o in others) + ")")
            continue
        numbers = [NUMBER.findall(o) for o in others]
        pieces, last = [], 0
        for k, m in enumerate(NUMBER.finditer(line)):
            values = [n[k] for n in numbers]
            pieces.append(line[last : m.start()])
            if len(set(values)) == 1:
                pieces.append(values[0])
            else:
                nb = len(before)
                pieces.append(f"[{' '.join(values[:nb])} | {' '.join(values[nb:])}]")
            last = m.end()
        lines.append("".join(pieces) + line[last:])
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__)
    p.add_argument("before", type=Path, help="checkout of the old revision (e.g. a git worktree)")
    p.add_argument("script", help="benchmark script, relative to the repository root")
    p.add_argument("--after", type=Path, default=ROOT, help="checkout of the new revision (default: this one)")
    p.add_argument("--runs", type=int, default=2, help="runs of each checkout, alternating")
    p.add_argument("--max-load", type=float, default=1.0, help="wait while the 1-minute load is above this")
    p.add_argument("--max-wait", type=float, default=600.0, help="seconds of waiting for a quiet machine, in all")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    a, args = p.parse_args(argv[:cut]), argv[cut + 1 :]  # after "--": the script's arguments (both checkouts)
    budget = [a.max_wait]
    outputs: dict[str, list[str]] = {"before": [], "after": []}
    for i in range(a.runs):
        for name, tree in (("before", a.before.resolve()), ("after", a.after.resolve())):
            level = wait_for_quiet(a.max_load, budget)
            print(f"run {i + 1} {name} ({tree}): load {level:.2f} at start", flush=True)
            start = time.perf_counter()
            outputs[name].append(run(tree, a.script, args))
            print(f"  {time.perf_counter() - start:.0f} s, load {load():.2f} at end", flush=True)
    print(f"\n{a.script}: numbers that differ as [before runs | after runs] (before: {a.before}, after: {a.after})")
    print("\n".join(merged(outputs["before"], outputs["after"])))


if __name__ == "__main__":
    main()
