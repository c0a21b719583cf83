"""A scorer whose optional package is absent stops with one line naming the pip install."""

from __future__ import annotations

import sys

import pytest

import cslg.scorers
from cslg.scorers import MissingModelError


@pytest.mark.parametrize("scorer, module", [("hpsv2", "open_clip"), ("imagereward", "torchvision.transforms")])
def test_absent_package_is_one_line_naming_the_install(monkeypatch, tmp_path, scorer, module):
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` raise ImportError
    with pytest.raises(MissingModelError) as e:
        cslg.scorers.get(scorer, model=tmp_path, device="cpu")
    assert "\n" not in str(e.value) and "pip install 'cslg[scorers]'" in str(e.value)
