"""What produced an output: library versions and the toolkit's git commit, recorded next to every output."""

from __future__ import annotations

import subprocess
from functools import cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

LIBRARIES = ("cslg", "torch", "diffusers", "transformers")


@cache
def versions() -> dict[str, str]:
    """``{"cslg": ..., "torch": ..., "diffusers": ..., "transformers": ..., "git_commit": ...}`` (the commit only when
    the toolkit runs from a git checkout; ``+dirty`` when it has uncommitted changes)."""
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            from . import __version__

            out[name] = __version__ if name == "cslg" else "not installed"
    root = Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        out["git_commit"] = commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return out
