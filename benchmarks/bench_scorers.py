"""Time and peak memory to score N images with each scorer, on the scorers' tiny models (``save_tiny``) or on the
models given with ``--model NAME=PATH_OR_ID``. Each scorer runs in its own process, so its peak memory (resident
set; CUDA: peak allocated) is its own. Set-level scorers score the N images against N other images.

    python benchmarks/bench_scorers.py                              # every registered scorer, tiny models, 100 images
    python benchmarks/bench_scorers.py --scorers vqascore fid --images 32 --size 64
    python benchmarks/bench_scorers.py --scorers vqascore --model vqascore=Qwen/Qwen2.5-VL-7B-Instruct --dtype bfloat16
    python benchmarks/bench_scorers.py --scorers kid --option kid:subset_size=100   # a scorer's option (JSON value)
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def measure(name: str, model: str | None, options: dict, images: int, size: int, dtype: str) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    import cslg.scorers
    from cslg.scorers import MissingModelError, SetScorer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    cls = cslg.scorers.scorer_class(name)
    rng = np.random.default_rng(0)
    batch = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(2 * images)]
    prompts = ["a red book and a gold clock on a wooden table"] * images
    with tempfile.TemporaryDirectory() as folder:
        try:
            path = model or str(cls.save_tiny(folder))
            start = time.perf_counter()
            scorer = cslg.scorers.get(name, model=path, device=device, dtype=getattr(torch, dtype), **options)
            loaded = time.perf_counter()
            if isinstance(scorer, SetScorer):
                scorer.score_set(batch[:images], batch[images:])
            else:
                scorer.score(batch[:images], prompts)
            if device == "cuda":
                torch.cuda.synchronize()
            done = time.perf_counter()
        except MissingModelError as e:
            return {"scorer": name, "error": str(e)}
    return {"scorer": name, "model": "tiny" if model is None else model, "device": device,
            "load_s": round(loaded - start, 2), "score_s": round(done - loaded, 2),
            "images_per_s": round(images / (done - loaded), 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if device == "cuda" else None}


def main() -> None:
    import cslg.scorers

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scorers", nargs="+", default=cslg.scorers.names(), help="scorer names (default: all)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--model", action="append", default=[], metavar="NAME=PATH_OR_ID", help="a real model per scorer")
    p.add_argument("--option", action="append", default=[], metavar="NAME:KEY=JSON", help="a scorer's option")
    p.add_argument("--dtype", default="float32", help="torch dtype of the models (e.g. bfloat16 on a GPU)")
    p.add_argument("--one", help=argparse.SUPPRESS)  # the child process: measure this scorer, print JSON
    a = p.parse_args()
    models = dict(m.split("=", 1) for m in a.model)
    options: dict[str, dict] = {}
    for item in a.option:
        scorer, _, assignment = item.partition(":")
        key, _, value = assignment.partition("=")
        options.setdefault(scorer, {})[key] = json.loads(value)
    if a.one:
        print(json.dumps(measure(a.one, models.get(a.one), options.get(a.one, {}), a.images, a.size, a.dtype)))
        return
    print(f"{a.images} images of {a.size}x{a.size} per scorer")
    for name in a.scorers:
        cmd = [sys.executable, __file__, "--one", name, "--images", str(a.images), "--size", str(a.size),
               "--dtype", a.dtype, *(f"--model={m}" for m in a.model), *(f"--option={o}" for o in a.option)]
        run = subprocess.run(cmd, capture_output=True, text=True)
        lines = run.stdout.strip().splitlines()
        print(lines[-1] if run.returncode == 0 and lines else
              json.dumps({"scorer": name, "error": (run.stderr.strip().splitlines() or ["failed"])[-1]}))


if __name__ == "__main__":
    main()
