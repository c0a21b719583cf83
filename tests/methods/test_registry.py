"""Every method of the field changes the image on every family (none of them is a silent no-op)."""

from __future__ import annotations

import numpy as np
import pytest

import cslg
from cslg.methods import APG, CFG, PAG, CFGZeroStar, SkippedNegativeSLG

from ..helpers import H, MSL, W, tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 5
STEPS = 4


def _generate(name, method):
    return cslg.generate(tiny(name), PROMPT, method, seed=SEED, steps=STEPS, height=H, width=W, negative_prompt=NEG,
                         max_sequence_length=MSL, output_type="np", progress=False).images[0]


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux", "tiny-qwenimage", "tiny-pixart-sigma"])
def test_every_field_method_changes_the_image(name):
    cfg = _generate(name, CFG(4.0))
    for method in (PAG(["1"], 2.0, 4.0), APG(4.0, eta=0.0, norm_threshold=1.0, momentum=-0.5), CFGZeroStar(4.0),
                   SkippedNegativeSLG(["1"], 4.0)):
        image = _generate(name, method)
        assert np.isfinite(image).all(), f"{method.name} on {name}: non-finite image"
        # Well above float noise (~1e-6): Qwen-Image's per-token norm rescale keeps tiny-model changes small
        assert np.abs(image - cfg).max() > 1e-3, f"{method.name} on {name} gave the CFG image"
