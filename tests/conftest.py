"""Shared fixtures (the tiny pipelines come from ``tests.helpers``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from .helpers import ROOT, tiny

# The tiny models are too small to gain from threads; one thread is faster on a shared 2-core machine.
torch.set_num_threads(1)


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
