"""Images per second when several seeds of one method share one batched forward (``cslg grid --batch-size``,
``cslg.generate`` with a list of prompts or ``num_images_per_prompt``), against one image at a time, measured side by
side: the batch sizes alternate round by round on the same images (the same prompts and seeds).

    python benchmarks/bench_batch.py                       # small random SD3 and FLUX, CPU or GPU
    python benchmarks/bench_batch.py --images 16 --batch-sizes 1,4,16 --size 256
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cslg.families import adapter_for  # noqa: E402
from cslg.families.flux import build_tiny_flux  # noqa: E402
from cslg.families.sd3 import build_tiny_sd3  # noqa: E402
from cslg.families.tiny import TinySize  # noqa: E402
from cslg.guidance.sampling import sample_batch  # noqa: E402
from cslg.methods import CFG, CSLG, Request  # noqa: E402

MODEL = TinySize(double_blocks=8, single_blocks=8, heads=4, head_dim=32, text_dim=64, t5_dim=128, sample_size=64)
PROMPT = "a storefront with a neon sign that says 'OPEN LATE'"


def sync() -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=8, help="images per measurement (seeds 0..N-1)")
    p.add_argument("--batch-sizes", default="1,4,8", help="batch sizes to compare")
    p.add_argument("--size", type=int, default=64, help="image side in pixels")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    a = p.parse_args()
    sizes = [int(x) for x in a.batch_sizes.split(",")]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(f"{a.images} images of {a.size}x{a.size}, {a.steps} steps, {a.rounds} rounds on {device}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for family, build in (("sd3", build_tiny_sd3), ("flux", build_tiny_flux)):
        adapter = adapter_for(build(MODEL).to(device))
        for method in (CFG(4.0), CSLG(("3",), 2.0, 4.0)):
            seconds: dict[int, list[float]] = {b: [] for b in sizes}
            for r in range(a.rounds + 1):  # round 0: warm-up
                for b in sizes[r % len(sizes):] + sizes[:r % len(sizes)]:
                    start = sync()
                    for first in range(0, a.images, b):
                        n = min(b, a.images - first)
                        sample_batch(adapter, method, [Request(PROMPT)] * n, list(range(first, first + n)), a.steps,
                                     a.size, a.size, 64, output_type="latent")
                    if r:
                        seconds[b].append(sync() - start)
            base = statistics.median(seconds[sizes[0]])
            row = ", ".join(f"batch {b}: {a.images / statistics.median(s):.2f} img/s "
                            f"(x{base / statistics.median(s):.2f})" for b, s in seconds.items())
            print(f"{family} {method.name}: {row}")


if __name__ == "__main__":
    main()
