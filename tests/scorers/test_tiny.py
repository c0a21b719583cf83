"""``python -m cslg.scorers.tiny``: writes each scorer's tiny model and prints the flags that load it."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import cslg.scorers
from cslg.scorers import tiny


def test_writes_tiny_models_and_prints_their_flags(tmp_path, capsys):
    assert tiny.main(["--out", str(tmp_path), "clip"]) == 0
    flags = capsys.readouterr().out.split()
    assert flags == ["--clip-model", str(tmp_path / "clip")]
    scorer = cslg.scorers.get("clip", model=flags[1], device="cpu")
    image = Image.fromarray(np.zeros((32, 32, 3), np.uint8))
    assert 0 <= scorer.score([image], ["a cup"])[0] <= 100


def test_unknown_name_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as caught:
        tiny.main(["--out", str(tmp_path), "nope"])
    assert caught.value.code == 2 and "unknown scorer 'nope'; choose from" in capsys.readouterr().err
