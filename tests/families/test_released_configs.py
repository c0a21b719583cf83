"""Each adapter's ``released`` transformer configuration builds its family's real transformer class (on the meta
device: no memory, no weights) with the released checkpoint's parameter count."""

from __future__ import annotations

import pytest
import torch

from cslg.families import adapter_class_by_name, transformer_classes

# published sizes: FLUX.2-dev 32B, FLUX.2 [klein] 4B, Chroma1-HD 8.9B, CogView4-6B (transformer parameters)
PARAMETERS = {"flux2": 32.2e9, "flux2-klein": 3.9e9, "chroma": 8.9e9, "cogview4": 6.4e9}


@pytest.mark.parametrize("family", sorted(PARAMETERS))
def test_released_config_builds_the_released_size(family):
    cls = adapter_class_by_name(family)
    released = cls.released
    assert {"transformer", "height", "width", "steps"} <= set(released)
    with torch.device("meta"):
        model = transformer_classes(cls)[0](**released["transformer"])
    n = sum(p.numel() for p in model.parameters())
    assert abs(n - PARAMETERS[family]) / PARAMETERS[family] < 0.02, f"{family}: {n / 1e9:.2f}B parameters"
