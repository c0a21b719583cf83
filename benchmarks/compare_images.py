"""Are the images of two revisions byte-identical? Generates the same grid of every method on every tiny family
with each checkout's own ``python -m cslg grid`` and compares the PNG files, matched by what they show (prompt,
seed, method and the settings that shape it), not by file name (names follow the manifest's params, which may be
recorded differently by another revision).

    git worktree add /tmp/cslg_before <old commit>
    python benchmarks/compare_images.py /tmp/cslg_before            # this checkout is "after"
    git worktree remove --force /tmp/cslg_before

Exit status 0 when every image of one revision has a byte-identical twin in the other, 1 otherwise.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PRESETS = ("tiny-flux", "tiny-sd3", "tiny-sd35", "tiny-qwenimage", "tiny-pixart-sigma")
# Flags both revisions understand; every setting that may have changed its default is given explicitly.
GRID = [
    "--limit", "2", "--seeds", "0,1", "--steps", "3", "--height", "32", "--width", "32", "--max-sequence-length", "32",
    "--methods", "none", "cfg", "slg", "cslg", "scfg", "concept", "pag", "apg", "cfgzero", "slg-neg",
    "--cfg-scales", "1,4", "--cslg-scales", "2", "--pag-scales", "2", "--concept-scales", "3", "--layers", "1",
    "--pag-layers", "1", "--slg-layers", "1", "2", "--slg-start", "0", "--slg-stop", "1", "--scfg-layers", "2", "3",
    "--apg-momentum", "-0.5",
    "--apg-eta", "0.5", "--apg-norm-threshold", "15", "--cfgzero-zero-init-steps", "1",
]
SCALE_KEYS = ("scale", "cslg_scale", "pag_scale")


def generate(checkout: Path, out: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(checkout))
    for preset in PRESETS:
        cmd = [sys.executable, "-m", "cslg", "grid", "--model", preset, *GRID, "--out", str(out / preset)]
        done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True)
        if done.returncode:
            sys.exit(f"{checkout}: {' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
        print(f"  {checkout.name}: {preset} done", flush=True)


def key(record: dict) -> tuple:
    """What an image shows: prompt, seed, method and the settings both revisions record (under either name)."""
    p = record["params"]
    scale = next((p[k] for k in SCALE_KEYS if k in p), None)
    layers = p.get("layers") if isinstance(p.get("layers"), list) else None
    return (record["prompt"], record["seed"], record["method"], p.get("cfg_scale"), scale,
            tuple(layers) if layers else None, p.get("concept_scale"))


def digests(folder: Path) -> dict[tuple, str]:
    out = {}
    for preset in PRESETS:
        run = folder / preset
        for line in (run / "manifest.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line)
            k = (preset, *key(record))
            if k in out:
                sys.exit(f"{run}: two images share the key {k}")
            out[k] = hashlib.sha256((run / record["image"]).read_bytes()).hexdigest()
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], epilog=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("before", type=Path, help="checkout of the old revision (e.g. a git worktree)")
    p.add_argument("--after", type=Path, default=ROOT, help="checkout of the new revision (default: this one)")
    p.add_argument("--keep", type=Path, default=None, help="keep the generated run folders here")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base = a.keep or Path(tmp)
        for name, tree in (("before", a.before.resolve()), ("after", a.after.resolve())):
            generate(tree, base / name)
        before, after = digests(base / "before"), digests(base / "after")
    only = set(before) ^ set(after)
    differ = [k for k in set(before) & set(after) if before[k] != after[k]]
    for k in sorted(only, key=str)[:10]:
        print(f"only in {'before' if k in before else 'after'}: {k}")
    for k in sorted(differ, key=str)[:10]:
        print(f"differs: {k}")
    same = len(set(before) & set(after)) - len(differ)
    print(f"{same} of {len(set(before) | set(after))} images byte-identical "
          f"({len(differ)} differ, {len(only)} without a twin)")
    sys.exit(0 if not differ and not only else 1)


if __name__ == "__main__":
    main()
