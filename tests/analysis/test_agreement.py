"""Agreement of layer rankings: rank correlations and top-k overlap by hand and against scipy, the comparison of
several finders' captures and layers.json files by ``cslg analyse``."""

from __future__ import annotations

import json

import pytest
import torch
from scipy.stats import kendalltau, spearmanr

import visualize
from cslg.analysis.agreement import (
    agreement, check_comparable, pairs_digest, rank_correlations, ranked_layers, top_k_overlap,
)
from cslg.capture import save_capture


def _layers_json(scores: dict[str, float], finder: str | None = None, descending: bool = False, **extra) -> dict:
    rows = sorted(scores.items(), key=lambda kv: -kv[1] if descending else kv[1])
    data = {"model": "org/Tiny-Model", "family": "sd3", "pairs": 2, "metric": "score",
            "ranking": [{"rank": i + 1, "layer": l, "score": s, "spread": 0.01} for i, (l, s) in enumerate(rows)],
            **extra}
    if finder is not None:
        data["finder"] = finder
    return data


A = {"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4, "4": 0.5}  # ranks 1 2 3 4 5 (lower is better)
B = {"0": 0.2, "1": 0.1, "2": 0.3, "3": 0.5, "4": 0.4}  # ranks 2 1 3 5 4: layers 0/1 and 3/4 swapped


def test_rank_correlations_of_a_known_permutation_by_hand_and_scipy():
    a, b = ranked_layers(_layers_json(A)), ranked_layers(_layers_json(B, "ablation"))
    layers = ["0", "1", "2", "3", "4"]
    got = rank_correlations(a, b, layers)
    # by hand: d = (-1, 1, 0, -1, 1), rho = 1 - 6 * 4 / (5 * (25 - 1)) = 0.8; of 10 layer pairs 2 are discordant
    # ((0,1) and (3,4)): tau = (8 - 2) / 10 = 0.6
    assert got["spearman"] == pytest.approx(0.8) and got["kendall"] == pytest.approx(0.6)
    assert got["spearman"] == pytest.approx(spearmanr([A[l] for l in layers], [B[l] for l in layers]).statistic)
    assert got["kendall"] == pytest.approx(kendalltau([A[l] for l in layers], [B[l] for l in layers]).statistic)
    assert 0 < got["spearman_p"] < 1 and a.finder == "contrast" and b.finder == "ablation"  # no finder: contrast


def test_a_descending_ranking_is_oriented_before_it_is_compared():
    """A finder whose higher score is better (rows in descending order) ranks the same layers first as the
    ascending ranking of the negated scores: the comparison sees the same ranking."""
    b_desc = ranked_layers(_layers_json({l: -s for l, s in B.items()}, "patching", descending=True))
    assert not b_desc.ascending and b_desc.layers[0] == "1"
    got = rank_correlations(ranked_layers(_layers_json(A)), b_desc, list(A))
    assert got["spearman"] == pytest.approx(0.8) and got["kendall"] == pytest.approx(0.6)


def test_ties_take_mean_ranks():
    a = ranked_layers(_layers_json({"0": 0.1, "1": 0.2, "2": 0.2, "3": 0.4}))
    b = ranked_layers(_layers_json({"0": 0.1, "1": 0.2, "2": 0.3, "3": 0.4}))
    # ranks (1, 2.5, 2.5, 4) and (1, 2, 3, 4): Pearson of the ranks = 4.5 / sqrt(4.5 * 5)
    assert rank_correlations(a, b, list("0123"))["spearman"] == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    flat = ranked_layers(_layers_json({"0": 0.0, "1": 0.0}))
    assert rank_correlations(flat, b, ["0", "1"])["spearman"] is None  # undefined, not NaN
    two = rank_correlations(b, ranked_layers(_layers_json({"0": 0.2, "1": 0.1})), ["0", "1"])
    assert two["spearman"] == pytest.approx(-1.0) and two["spearman_p"] is None and two["kendall"] == -1.0


def test_top_k_overlap_by_hand():
    a = ranked_layers(_layers_json(A))
    b = ranked_layers(_layers_json({"0": 0.9, "1": 0.1, "2": 0.3, "3": 0.2, "4": 0.5}))
    # top-2: {0, 1} and {1, 3} share 1; top-3: {0, 1, 2} and {1, 3, 2} share 1 and 2
    assert top_k_overlap(a, b, 2) == {"k": 2, "shared": ["1"], "count": 1, "fraction": 0.5}
    assert top_k_overlap(a, b, 3) == {"k": 3, "shared": ["1", "2"], "count": 2, "fraction": pytest.approx(2 / 3)}
    # among the layers both rank: 0 left out, the top-2 of the rest are {1, 2} and {1, 3}
    assert top_k_overlap(a, b, 2, among=["1", "2", "3", "4"])["shared"] == ["1"]
    with pytest.raises(ValueError, match="--top-k"):
        top_k_overlap(a, b, 0)


def test_agreement_on_common_layers_and_bad_rankings():
    a = ranked_layers(_layers_json({**A, "s0": 0.05}), label="contrast")
    b = ranked_layers(_layers_json(B, "ablation"))
    result = agreement([a, b], 2)
    assert result["layers"] == ["0", "1", "2", "3", "4"]  # s0 is ranked by one finder only
    assert result["rankings"][0]["top"] == ["0", "1"] and "1 layer(s)" in result["notes"][0]
    assert result["pairs"][0]["spearman"] == pytest.approx(0.8)
    with pytest.raises(ValueError, match="not sorted by score"):
        ranked_layers({"ranking": [{"layer": "0", "score": 0.1}, {"layer": "1", "score": 0.3},
                                   {"layer": "2", "score": 0.2}]}, source="x.json")
    with pytest.raises(ValueError, match="x.json: layer '0' is ranked twice"):
        ranked_layers({"ranking": [{"layer": "0", "score": 0.1}, {"layer": "0", "score": 0.3}]}, source="x.json")
    with pytest.raises(ValueError, match="^y.json: ranking row 1 needs"):
        ranked_layers({"ranking": [{"layer": "0", "score": float("nan")}]}, source="y.json")


def test_check_comparable_refuses_other_models_and_pairs():
    same = pairs_digest([["a", "a 'x'"], ["b", "b 'y'"]])
    assert same == pairs_digest([["b", "b 'y'"], ["a", "a 'x'"]])  # pooled captures in any order
    a = _layers_json(A, pairs_sha1=same)
    assert check_comparable([("a.json", a), ("b.json", _layers_json(B, pairs_sha1=same))]) == []
    with pytest.raises(ValueError, match="^b.json: model 'org/Other' differs from a.json"):
        check_comparable([("a.json", a), ("b.json", {**a, "model": "org/Other"})])
    with pytest.raises(ValueError, match="^b.json: its prompt pairs differ from those of a.json"):
        check_comparable([("a.json", a), ("b.json", {**a, "pairs_sha1": pairs_digest([["c", "d"]])})])
    notes = check_comparable([("a.json", a), ("b.json", _layers_json(B))])
    assert "only the pair count" in notes[0]


PROMPTS = [["a wall", "a wall that says 'HI'"], ["a cup", "a cup that says 'OK'"]]


def _capture(path, cosine, prompts=PROMPTS, **meta):
    causal = {} if meta.get("finder", "contrast") == "contrast" else {  # the causal finders' measures
        "distance": 1 - cosine, "reference_distance": torch.ones(cosine.shape[:2]),
        "reference_cosine": torch.ones(cosine.shape[:2])}
    save_capture(path, {"cosine": cosine, "input_cosine": torch.ones(cosine.shape[:2]), **causal},
                 {"model": "org/Tiny-Model", "family": "sd3", "layer_names": [str(i) for i in range(cosine.shape[-1])],
                  "steps": cosine.shape[1], "prompts": prompts, "block_groups": [["joint blocks", 0]], **meta})
    return path


def test_cslg_analyse_compares_a_capture_with_another_finders_ranking(tmp_path, capsys):
    cos = torch.ones(2, 3, 5)
    cos[:, :, 1:] = 0.9
    cos[:, :, 3:] = 0.7  # contrast: block 3 drops most (-0.2), then block 1 (-0.1), then 0, 2, 4 (0)
    contrast = _capture(tmp_path / "contrast.safetensors", cos)
    ablation = tmp_path / "ablation_layers.json"
    # another finder over the same pairs: ratio of distances, lower is better; it agrees on the top-2 set
    ablation.write_text(json.dumps(_layers_json({"0": 0.9, "1": 0.4, "2": 0.8, "3": 0.5, "4": 1.0}, "ablation",
                                                pairs_sha1=pairs_digest(PROMPTS))))
    path = visualize.main([str(contrast), str(ablation), "--out", str(tmp_path / "cmp"), "--top-k", "2", "--dpi", "40"])
    data = json.loads(path.read_text())
    ranked = json.loads((tmp_path / "cmp" / "contrast" / "layers.json").read_text())
    assert ranked["finder"] == "contrast" and ranked["suggested"] == ["3", "1"]
    assert ranked["pairs_sha1"] == pairs_digest(PROMPTS) and ranked["layer_names"] == ["0", "1", "2", "3", "4"]
    pair = data["pairs"][0]
    assert (pair["a"], pair["b"]) == ("contrast", "ablation") and pair["top_k"]["shared"] == ["3", "1"]
    x = [ranked["ranking"][[r["layer"] for r in ranked["ranking"]].index(l)]["score"] for l in "01234"]
    assert pair["spearman"] == pytest.approx(spearmanr(x, [0.9, 0.4, 0.8, 0.5, 1.0]).statistic)
    assert (tmp_path / "cmp" / "agreement.png").is_file() and data["notes"] == []
    out = capsys.readouterr().out
    assert "contrast vs ablation: Spearman" in out and "top-2 overlap 2/2 (3, 1)" in out


def test_cslg_analyse_groups_captures_by_finder(tmp_path, capsys):
    cos = torch.ones(2, 2, 4)
    cos[:, :, 2:] = 0.8
    a = _capture(tmp_path / "a.safetensors", cos)
    b = _capture(tmp_path / "b.safetensors", cos * 0.99)  # more pairs of the same finder (a copy is refused)
    layers_json = visualize.main([str(a), str(b), "--out", str(tmp_path / "pooled"), "--dpi", "40"])
    assert json.loads(layers_json.read_text())["pairs"] == 4  # one finder: its captures are pooled, as before
    assert not (tmp_path / "pooled" / "agreement.json").exists()
    c = _capture(tmp_path / "c.safetensors", cos, finder="patching")
    with pytest.raises(SystemExit, match="^error: .*c.safetensors: pairs 2 differs from .*a.safetensors .4."):
        visualize.main([str(a), str(b), str(c), "--out", str(tmp_path / "dup")])  # a and b pooled: 4 pairs
    path = visualize.main([str(a), str(c), "--out", str(tmp_path / "cmp"), "--top-k", "1", "--dpi", "40"])
    data = json.loads(path.read_text())
    assert [r["label"] for r in data["rankings"]] == ["contrast", "patching"]
    assert json.loads((tmp_path / "cmp" / "patching" / "layers.json").read_text())["finder"] == "patching"
    other = _capture(tmp_path / "other.safetensors", cos, prompts=[["x", "x 'y'"], ["z", "z 'w'"]], finder="patching")
    with pytest.raises(SystemExit, match="^error: .*other.safetensors: its prompt pairs differ from those of .*a.saf"):
        visualize.main([str(a), str(other), "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # refused before anything is written
    model = _capture(tmp_path / "model.safetensors", cos, finder="patching", model="org/Other")
    with pytest.raises(SystemExit, match="^error: .*model.safetensors: model 'org/Other' differs from .*a.safetensors"):
        visualize.main([str(a), str(model), "--out", str(tmp_path / "bad")])
    with pytest.raises(SystemExit, match="^error: .*: finder patching differs"):
        from cslg.analysis import analyse
        from cslg.capture import load_capture
        try:
            analyse([load_capture(a), load_capture(c)], tmp_path / "api")
        except ValueError as e:
            raise SystemExit(f"error: {e}") from None
    with pytest.raises(SystemExit, match="^error: .*one ranking, nothing to compare"):
        visualize.main([str(tmp_path / "cmp" / "patching" / "layers.json")])
