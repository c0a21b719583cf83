"""Time and peak memory to score N images with each registered scorer, each in its own process (so that one
scorer's peak is not another's), side by side in one run.

    python benchmarks/bench_scorers.py                      # every scorer, its tiny model, 100 images of 64 px, CPU
    python benchmarks/bench_scorers.py --device cuda --clip-model /models/clip-vit-large-patch14 clip

Per-image scorers score N images with their prompts; set-level ones (FID, KID) one set of N images against a
reference of N other images. Reported: the import time of the scorer's module (transformers...), the load time, the scoring time (after a 2-image warm-up) and images per
second, the process's peak resident memory and its growth over the process before the scorer's import, and on CUDA
the peak allocated GPU memory. A scorer that cannot load (its package or model missing) is listed with its reason.
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

PROMPTS = ["a red book and a gold clock", "a hand holding a cup", "a storefront sign that says 'OPEN'",
           "a misty mountain lake at dawn, highly detailed"]


def rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def images(n: int, size: int, seed: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def child(name: str, model: str, n: int, size: int, device: str, batch_size: int | None, threads: int) -> dict:
    """One scorer in this process: load, warm up, score; the figures as a dict."""
    import torch

    torch.set_num_threads(threads)
    batch = images(n, size, 0)
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(n)]
    before = rss_mb()
    options = {} if batch_size is None else {"batch_size": batch_size}
    try:
        start = time.perf_counter()
        cls = cslg.scorers.scorer_class(name)
        import_s = time.perf_counter() - start
        scorer = cls(model=model, device=device, **options)
    except (cslg.scorers.MissingModelError, ImportError, OSError, ValueError) as e:
        return {"name": name, "skipped": str(e).splitlines()[0][:200]}
    load_s = time.perf_counter() - start - import_s
    set_level = isinstance(scorer, cslg.scorers.SetScorer)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()

    def run(k: int) -> None:
        if set_level:
            with tempfile.TemporaryDirectory() as reference:
                for i, image in enumerate(images(k, size, 1)):
                    image.save(Path(reference) / f"{i}.png")
                scorer.score_set(batch[:k], reference)
        else:
            scorer.score(batch[:k], prompts[:k])
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    run(2)
    start = time.perf_counter()
    run(n)
    score_s = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out = {"name": name, "model": model, "import_s": import_s, "load_s": load_s, "score_s": score_s, "images_per_s": n / score_s,
           "peak_rss_mb": peak, "rss_growth_mb": peak - before, "set_level": set_level}
    if device.startswith("cuda"):
        out["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("names", nargs="*", metavar="NAME", help="scorers (default: every registered one)")
    p.add_argument("--images", type=int, default=100, help="images scored per scorer")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=None, help="images per batch (default: each scorer's own)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    for name in cslg.scorers.names():
        p.add_argument(f"--{name}-model", dest=f"model_{name}", metavar="PATH_OR_ID",
                       help=f"the {name} model (default: its tiny model)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.child:
        name, model = json.loads(a.child)
        print(json.dumps(child(name, model, a.images, a.size, a.device, a.batch_size, a.threads)))
        return
    names = a.names or cslg.scorers.names()
    print(f"{a.images} images of {a.size}x{a.size} per scorer on {a.device}, {a.threads} thread(s), one process each")
    with tempfile.TemporaryDirectory() as tiny:
        results = []
        for name in names:
            model = getattr(a, f"model_{name}")
            if model is None:
                try:
                    model = str(cslg.scorers.scorer_class(name).save_tiny(Path(tiny) / name))
                except (ImportError, NotImplementedError) as e:
                    results.append({"name": name, "skipped": f"no tiny model ({e})"})
                    continue
            command = [sys.executable, __file__, "--child", json.dumps([name, model]), "--images", str(a.images),
                       "--size", str(a.size), "--device", a.device, "--threads", str(a.threads)]
            if a.batch_size is not None:
                command += ["--batch-size", str(a.batch_size)]
            done = subprocess.run(command, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            try:
                results.append(json.loads(lines[-1]))
            except (IndexError, json.JSONDecodeError):
                results.append({"name": name, "skipped": (done.stderr.strip().splitlines() or ["crashed"])[-1]})
    header = f"{'scorer':<14} {'import s':>8} {'load s':>7} {'score s':>8} {'img/s':>7} {'peak RSS MiB':>13} {'growth MiB':>11}"
    print(header + (f" {'peak GPU MiB':>13}" if a.device.startswith("cuda") else ""))
    for r in results:
        if "skipped" in r:
            print(f"{r['name']:<14} skipped: {r['skipped']}")
            continue
        line = (f"{r['name']:<14} {r['import_s']:>8.2f} {r['load_s']:>7.2f} {r['score_s']:>8.2f} {r['images_per_s']:>7.1f} "
                f"{r['peak_rss_mb']:>13.0f} {r['rss_growth_mb']:>11.0f}")
        print(line + (f" {r['peak_gpu_mb']:>13.0f}" if "peak_gpu_mb" in r else ""))


if __name__ == "__main__":
    main()
