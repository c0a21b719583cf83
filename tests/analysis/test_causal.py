"""Scores of the causal finders on hand-computed tensors, and the analysis of their captures (layers.json, figures,
the commands)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import visualize
from cslg.analysis import analyse, causal_change, rank_captures
from cslg.analysis.causal import descending, parse_score
from cslg.capture import load_capture, save_capture
from cslg.cli import run as cslg_run
from cslg.options import CAUSAL_SCORES

VALUE = torch.tensor([[2.0, 1.0, 4.0]])  # m_l of one step, 3 layers
REFERENCE = torch.tensor([2.0])  # m


@pytest.mark.parametrize("score,expected", [
    ("distance", [2.0, 1.0, 4.0]),
    ("distance-ratio", [1.0, 0.5, 2.0]),
    ("distance-difference", [0.0, -1.0, 2.0]),
    ("distance-drop", [0.0, -1.0, 3.0]),  # s_{-1} = m = 2
    ("distance-ratio-drop", [0.0, -0.5, 1.5]),  # s_{-1} = m / m = 1
    ("distance-difference-drop", [0.0, -1.0, 3.0]),  # s_{-1} = 0
    ("cosine-ratio", [1.0, 0.5, 2.0]),
])
def test_scores_by_hand(score, expected):
    got = causal_change(VALUE, REFERENCE, score)
    assert torch.allclose(got, torch.tensor([expected], dtype=torch.float64), atol=1e-6)


def test_drop_starts_from_the_unperturbed_value():
    """The first block's drop is measured from the unperturbed reference, not from itself."""
    got = causal_change(torch.tensor([[0.5, 0.5]]), torch.tensor([2.0]), "distance-drop")
    assert torch.allclose(got, torch.tensor([[-1.5, 0.0]], dtype=torch.float64))


def test_score_names_and_directions():
    assert len(CAUSAL_SCORES) == 12
    assert parse_score("cosine-difference-drop") == ("cosine", "difference", True)
    assert parse_score("distance") == ("distance", "raw", False)
    assert descending("cosine-ratio") and not descending("distance-ratio-drop")
    with pytest.raises(ValueError, match="^--score must be one of distance-ratio, "):
        parse_score("ratio")


def _causal_capture(path, finder, distance, reference, names, cosine=None):
    pairs, steps, layers = distance.shape
    cosine = torch.full_like(distance, 0.5) if cosine is None else cosine
    tensors = {"cosine": cosine, "distance": distance, "reference_distance": reference,
               "reference_cosine": torch.full((pairs, steps), 0.5)}
    meta = {"model": "org/Tiny-Model", "family": "flux", "layer_names": names, "steps": steps, "finder": finder,
            "trajectory": "shared", "block_groups": [["double-stream blocks", 0], ["single-stream blocks", 2]]}
    return save_capture(path, tensors, meta)


def test_analyse_ranks_an_ablation_capture_by_its_own_score(tmp_path, capsys):
    names = ["0", "1", "s0", "s1"]
    distance = torch.full((2, 3, 4), 2.0)
    distance[:, :, 2] = 0.5  # skipping s0 brings the positive prediction toward the negative one
    distance[:, :, 3] = 1.5
    cosine = torch.full((2, 3, 4), 0.5)
    cosine[:, :, 1] = 0.9  # by cosine, block 1 comes closest
    a = _causal_capture(tmp_path / "a.safetensors", "ablation", distance, torch.full((2, 3), 2.0), names, cosine)
    result = analyse([load_capture(a)], tmp_path / "ana", top_k=2, dpi=40)
    assert result["finder"] == "ablation" and result["score"] == "distance-ratio" and result["order"] == "ascending"
    assert result["suggested"] == ["s0", "s1"] and "metric" not in result
    assert result["ranking"][0] == {"rank": 1, "layer": "s0", "score": pytest.approx(0.25), "std": pytest.approx(0.0)}
    assert sorted(Path(f).name for f in result["figures"]) == [
        "Tiny-Model_ablation_distance-ratio_heatmap.png", "Tiny-Model_ablation_distance-ratio_per_layer.png"]
    by_cosine, _ = rank_captures([load_capture(a)], score="cosine-ratio")
    assert by_cosine.top(1) == ["1"]  # cosine scores rank the largest first

    layers_json = visualize.main([str(a), "--out", str(tmp_path / "v"), "--score", "distance-difference",
                                  "--top-k", "1", "--dpi", "40"])
    data = json.loads(Path(layers_json).read_text())
    assert data["score"] == "distance-difference" and data["ranking"][0]["score"] == pytest.approx(-1.5)
    assert "top-1 layers (ablation finder, distance-difference, mean over steps): s0" in capsys.readouterr().out


def test_patching_default_ranks_the_drop_and_captures_of_different_finders_do_not_mix(tmp_path):
    names = ["0", "1", "s0", "s1"]
    distance = torch.tensor([2.0, 1.9, 0.2, 0.1]).expand(1, 2, 4).clone()  # cumulative: small from s0 on
    p = _causal_capture(tmp_path / "p.safetensors", "patching", distance, torch.full((1, 2), 2.0), names)
    ranking, score = rank_captures([load_capture(p)])
    assert score == "distance-ratio-drop" and ranking.top(1) == ["s0"]
    a = _causal_capture(tmp_path / "a.safetensors", "ablation", distance, torch.full((1, 2), 2.0), names)
    with pytest.raises(ValueError, match="finder ablation differs from .*p.safetensors"):
        rank_captures([load_capture(p), load_capture(a)])


def test_score_errors(tmp_path):
    contrast = save_capture(tmp_path / "c.safetensors", {"cosine": torch.ones(1, 2, 2),
                                                         "input_cosine": torch.ones(1, 2)},
                            {"model": "m", "family": "flux", "layer_names": ["0", "1"], "steps": 2})
    with pytest.raises(SystemExit, match="^error: --score distance: scores are for ablation and patching captures"):
        cslg_run(["analyse", str(contrast), "--out", str(tmp_path / "x"), "--score", "distance"])
    broken = save_capture(tmp_path / "b.safetensors", {"cosine": torch.ones(1, 2, 2)},
                          {"model": "m", "family": "flux", "layer_names": ["0", "1"], "steps": 2, "finder": "ablation"})
    with pytest.raises(ValueError, match="this ablation capture needs a 'distance' tensor of shape \\(1, 2, 2\\)"):
        load_capture(broken)
