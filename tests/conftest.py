"""Shared fixtures: the tiny pipelines are built once per test session (they are deterministic)."""

from __future__ import annotations

from pathlib import Path

import pytest

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


@pytest.fixture(params=["tiny-flux", "tiny-sd3", "tiny-sd35"])
def any_pipe(request):
    return tiny(request.param)


@pytest.fixture
def sd3_pipe():
    return tiny("tiny-sd3")


@pytest.fixture
def flux_pipe():
    return tiny("tiny-flux")


@pytest.fixture
def root() -> Path:
    return ROOT
