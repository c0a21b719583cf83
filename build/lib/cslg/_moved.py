"""Module paths of earlier versions: importing one fails with a message that names its new place (the package was
split into subpackages in 0.3)."""

from __future__ import annotations

import importlib.abc
import sys

MOVED = {
    "activations": "cslg.capture (load_capture, save_capture, read_metadata)",
    "attention": "cslg.guidance.attention",
    "command": "cslg.cli (the `cslg` command; main)",
    "contact_sheet": "cslg.grid.contact_sheet",
    "executor": "cslg.guidance.executor (Pass: cslg.guidance.passes)",
    "inspect": "cslg.cli.inspect_capture (run `cslg inspect FILE`)",
    "known_text": "cslg.evaluation.known_text (run `python -m cslg.evaluation.known_text`)",
    "metrics": "cslg.evaluation.metrics",
    "ocr": "cslg.evaluation.ocr",
    "paper": "cslg.cli.paper (run `cslg paper`)",
    "plots": "cslg.analysis.plots",
    "sampling": "cslg.guidance.sampling",
    "skip": "cslg.guidance.skip (or cslg.skip_blocks)",
    "tiny": "cslg.families (build_tiny, TinySize; each family's module builds its preset)",
}


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Answers only for the old module paths under the package, after every other finder found nothing."""

    def __init__(self, package: str):
        self.package = package

    def find_spec(self, fullname, path=None, target=None):
        parent, _, name = fullname.rpartition(".")
        if parent == self.package and name in MOVED:
            raise ModuleNotFoundError(f"{fullname} moved to {MOVED[name]}", name=fullname)
        return None


def install(package: str) -> None:
    if not any(isinstance(f, _MovedFinder) and f.package == package for f in sys.meta_path):
        sys.meta_path.append(_MovedFinder(package))
