"""Contrastive analysis (step 2): metric and ranking math on known tensors, visualize.py outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import cslg.analysis.plots
import visualize
from cslg.capture import load_capture, save_capture
from cslg.analysis import analyse, first_difference, per_pair_scores, rank_layers, relative_change
from cslg.cli import run as cslg_run


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


def _capture(path, cosine, names, input_cosine=True, **meta):
    tensors = {"cosine": cosine}
    if input_cosine is True:
        tensors["input_cosine"] = torch.ones(cosine.shape[:2])
    elif input_cosine is not None:
        tensors["input_cosine"] = input_cosine
    save_capture(path, tensors, {"model": "org/Tiny-Model", "family": "flux", "layer_names": names,
                                 "steps": cosine.shape[1], **meta})
    return path


def test_input_baseline_by_hand(tmp_path):
    """s_{-1} = the input similarity: a drift already present before block 0 is not charged to block 0."""
    cos = torch.tensor([[[0.7, 0.69, 0.4]]])  # one pair, one step: the inputs already differ (0.7)
    base = torch.tensor([[0.7]])
    torch.testing.assert_close(first_difference(cos, base), torch.tensor([[[0.0, -0.01, -0.29]]]))
    torch.testing.assert_close(first_difference(cos), torch.tensor([[[-0.3, -0.01, -0.29]]]))
    torch.testing.assert_close(relative_change(cos, base), torch.tensor([[[0.0, -0.01 / 0.7, -0.29 / 0.69]]]))
    names = ["0", "1", "2"]
    path = _capture(tmp_path / "c.safetensors", torch.tensor([[[0.7, 0.69, 0.6]]]), names, input_cosine=base)
    ranked = {}
    for baseline in ("input", "one"):
        visualize.main([str(path), "--out", str(tmp_path / baseline), "--top-k", "1", "--baseline", baseline, "--dpi", "50"])
        ranked[baseline] = json.loads((tmp_path / baseline / "layers.json").read_text())
    assert ranked["input"]["suggested"] == ["2"] and ranked["input"]["baseline"] == "input"
    assert ranked["one"]["suggested"] == ["0"]  # the paper's baseline charges the input drift to block 0
    old = _capture(tmp_path / "old.safetensors", torch.ones(1, 1, 3), names, input_cosine=None)
    with pytest.raises(SystemExit, match="no input similarity .*--baseline one"):
        visualize.main([str(old), "--out", str(tmp_path / "x")])


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
    with pytest.raises(SystemExit, match="^error: .*b.safetensors: layer_names"):  # one line naming the file
        visualize.main([str(a), str(b), "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        visualize.main([str(a), "--step", "last"])
    with pytest.raises(SystemExit, match="^error: capture file not found: .*missing.safetensors"):
        visualize.main([str(tmp_path / "missing.safetensors")])


def test_analyse_marks_block_groups_and_cslg_analyse_command(tmp_path, monkeypatch, capsys):
    seen = []
    real = cslg.analysis.plots._mark_block_groups
    monkeypatch.setattr(cslg.analysis.plots, "_mark_block_groups",
                        lambda ax, groups: seen.append([tuple(g) for g in groups]) or real(ax, groups))
    groups = [["double-stream blocks", 0], ["single-stream blocks", 2]]
    cos = torch.ones(2, 3, 4)
    cos[:, :, 3] = 0.7  # only s1 separates the prompts
    a = _capture(tmp_path / "a.safetensors", cos, ["0", "1", "s0", "s1"], block_groups=groups)
    result = analyse([load_capture(a)], tmp_path / "ana", top_k=1, dpi=50)
    assert seen == [[("double-stream blocks", 0), ("single-stream blocks", 2)]] * 2  # per-layer figure and heatmap
    assert result["suggested"] == ["s1"] and result["family"] == "flux" and result["pairs"] == 2
    assert [row["layer"] for row in result["ranking"]] == ["s1", "0", "1", "s0"]
    assert Path(result["path"]).is_file() and all(Path(f).is_file() for f in result["figures"])
    assert json.loads(Path(result["path"]).read_text())["suggested"] == ["s1"]

    layers_json = cslg_run(["analyse", str(a), "--out", str(tmp_path / "cmd"), "--metric", "relative",
                             "--step", "-1", "--top-k", "2", "--dpi", "50"])
    data = json.loads(Path(layers_json).read_text())
    assert data["metric"] == "relative" and data["step"] == -1 and data["suggested"] == ["s1", "0"]
    assert data["ranking"][0]["score"] == pytest.approx(-0.3)
    assert "top-2 layers (relative, step -1, baseline input): s1, 0" in capsys.readouterr().out
