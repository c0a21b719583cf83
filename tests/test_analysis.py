"""Contrastive analysis (step 2): metric and ranking math on known tensors, visualize.py outputs."""

from __future__ import annotations

import json

import pytest
import torch

import visualize
from cslg.activations import save_capture
from cslg.analysis import first_difference, per_pair_scores, rank_layers, relative_change


def test_first_difference_and_relative_change():
    s = torch.tensor([0.9, 0.6, 0.6, 0.3])
    assert torch.allclose(first_difference(s), torch.tensor([-0.1, -0.3, 0.0, -0.3]))
    assert torch.allclose(relative_change(s), torch.tensor([-0.1, -0.3 / 0.9, 0.0, -0.5]))


def test_scores_per_step_and_mean_over_steps():
    cos = torch.tensor([[[1.0, 0.8, 0.8], [0.9, 0.9, 0.5]]])  # [1 pair, 2 steps, 3 layers]
    assert torch.allclose(per_pair_scores(cos, step=0), torch.tensor([[0.0, -0.2, 0.0]], dtype=torch.float64))
    assert torch.allclose(per_pair_scores(cos, step=-1), torch.tensor([[-0.1, 0.0, -0.4]], dtype=torch.float64))
    assert torch.allclose(per_pair_scores(cos), torch.tensor([[-0.05, -0.1, -0.2]], dtype=torch.float64))
    with pytest.raises(ValueError, match="out of range"):
        per_pair_scores(cos, step=2)
    with pytest.raises(ValueError, match="--metric"):
        per_pair_scores(cos, metric="ratio")


def test_ranking_puts_largest_drop_first():
    scores = torch.tensor([[0.0, -0.3, 0.1, -0.1], [0.0, -0.1, 0.1, -0.2]])
    r = rank_layers(scores, ["0", "1", "s0", "s1"])
    assert r.top(2) == ["1", "s1"] and r.order == [1, 3, 0, 2]
    assert r.as_rows()[0] == {"rank": 1, "layer": "1", "score": pytest.approx(-0.2), "std": pytest.approx(0.1414, abs=1e-3)}


def _capture(path, cosine, names, **meta):
    save_capture(path, {"cosine": cosine}, {"model": "org/Tiny-Model", "family": "flux", "layer_names": names,
                                             "steps": cosine.shape[1], **meta})
    return path


def test_visualize_writes_ranking_and_figures(tmp_path):
    names = ["0", "1", "2", "s0", "s1"]
    cos = torch.ones(3, 4, 5)
    cos[:, :, 2] = 0.8  # block 2 separates the prompts; s0 brings them back together a little
    cos[:, :, 3:] = 0.85
    a = _capture(tmp_path / "a.safetensors", cos[:2], names)
    b = _capture(tmp_path / "b.safetensors", cos[2:], names)
    layers_json = visualize.main([str(a), str(b), "--out", str(tmp_path / "ana"), "--top-k", "2", "--dpi", "50"])
    data = json.loads(layers_json.read_text())
    assert data["pairs"] == 3 and data["suggested"][0] == "2" and data["top_k"] == 2
    assert [row["layer"] for row in data["ranking"]][0] == "2"
    assert data["ranking"][0]["score"] == pytest.approx(-0.2)
    pngs = sorted(p.name for p in (tmp_path / "ana").glob("*.png"))
    assert pngs == ["Tiny-Model_difference_heatmap.png", "Tiny-Model_difference_per_layer.png"]


def test_visualize_errors(tmp_path):
    a = _capture(tmp_path / "a.safetensors", torch.ones(1, 2, 3), ["0", "1", "2"])
    b = _capture(tmp_path / "b.safetensors", torch.ones(1, 2, 2), ["0", "1"])
    with pytest.raises(ValueError, match="layer_names"):
        visualize.main([str(a), str(b), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        visualize.main([str(a), "--step", "last"])
    with pytest.raises(FileNotFoundError):
        visualize.main([str(tmp_path / "missing.safetensors")])
