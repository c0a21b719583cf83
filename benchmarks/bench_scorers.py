"""Benchmark: time and peak memory to score 100 images, per per-image scorer.

Each scorer runs in its own process (so the peak resident memory is its own): load, one warm-up batch, then
``--images`` images of ``--size`` px scored in batches of ``--batch-size``. Without ``--model NAME=PATH`` a scorer
runs on its tiny randomly initialised model (``save_tiny``: CPU-friendly, measures the pipeline's overhead, not
the real network); with it, on the given checkpoint (e.g. on a GPU with the released weights). One table row
per scorer: load seconds, scoring seconds, images per second, peak RSS (MiB) and peak CUDA memory (MiB).

    python benchmarks/bench_scorers.py [--scorers aesthetic-v1 pickscore] [--images 100] [--device cpu]
                                       [--model pickscore=/models/PickScore_v1]
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

import cslg.scorers  # noqa: E402
from cslg.scorers import SetScorer  # noqa: E402

PROMPT = "a red book and a gold clock on a wooden table"


def per_image_scorers() -> list[str]:
    return [n for n in cslg.scorers.names() if not issubclass(cslg.scorers.scorer_class(n), SetScorer)]


def one(name: str, model: str | None, images: int, size: int, batch_size: int, device: str | None) -> dict:
    import numpy as np
    import torch
    from PIL import Image

    rng = np.random.default_rng(0)
    batch = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(images)]
    with tempfile.TemporaryDirectory() as folder:
        model = model or str(cslg.scorers.scorer_class(name).save_tiny(folder))
        start = time.perf_counter()
        scorer = cslg.scorers.get(name, model=model, device=device, batch_size=batch_size)
        load_s = time.perf_counter() - start
        scorer.score(batch[:batch_size], [PROMPT] * min(batch_size, images))  # warm-up
        cuda = scorer.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        scorer.score(batch, [PROMPT] * images)
        if cuda:
            torch.cuda.synchronize()
        score_s = time.perf_counter() - start
    return {"scorer": name, "model": "tiny" if model.startswith(folder) else model, "device": str(scorer.device),
            "load_s": round(load_s, 2), "score_s": round(score_s, 2), "images_per_s": round(images / score_s, 1),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "peak_cuda_mib": round(torch.cuda.max_memory_allocated() / 2**20) if cuda else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scorers", nargs="+", default=None, help="default: every per-image scorer")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH_OR_ID",
                        help="a real checkpoint for one scorer (default: its tiny model)")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--device", default=None, help="default: cuda when there is one, else cpu")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # the child process's scorer
    args = parser.parse_args()
    models = dict(m.split("=", 1) for m in args.model)
    if args.one:
        print(json.dumps(one(args.one, models.get(args.one), args.images, args.size, args.batch_size, args.device)))
        return
    rows = []
    for name in args.scorers or per_image_scorers():
        command = [sys.executable, __file__, "--one", name, "--images", str(args.images), "--size", str(args.size),
                   "--batch-size", str(args.batch_size)] + [f"--model={m}" for m in args.model]
        if args.device:
            command += ["--device", args.device]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            lines = done.stderr.strip().splitlines() or ["failed"]
            print(f"{name}: {lines[-1]}", file=sys.stderr)
            continue
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    columns = ["scorer", "model", "device", "load_s", "score_s", "images_per_s", "peak_rss_mib", "peak_cuda_mib"]
    print(" | ".join(columns))
    for row in rows:
        print(" | ".join(str(row[c]) for c in columns))


if __name__ == "__main__":
    main()
