"""What the tests share: the tiny pipelines, built once per session (they are deterministic), and small sizes."""

from __future__ import annotations

from pathlib import Path

from cslg.models import load_pipeline

ROOT = Path(__file__).resolve().parents[1]

# Small enough for a 2-core CPU, large enough that text changes the image tokens.
H = W = 32
STEPS = 4
MSL = 64

_PIPES: dict = {}


def tiny(name: str):
    """A cached tiny pipeline (fp32, CPU). Tests must not modify it."""
    if name not in _PIPES:
        _PIPES[name] = load_pipeline(name, device="cpu")
    return _PIPES[name]
