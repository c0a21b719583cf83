"""Layer weights from a ranking (``--layer-weights-from``) and upstream's guidance variants side by side in one grid:
the normalisation by hand, the variants' layers and weights, the manifest and labels naming them."""

from __future__ import annotations

import json

import pytest

import SD3_final_experiments as sd3_script
from cslg.analysis.weights import gains, layer_weights
from cslg.cli.grid import cells_of
from cslg.grid import method_label
from cslg.io import read_jsonl
from cslg.methods import CSLG, NoGuidance
from cslg.methods.base import layer_variant

TINY = ["--steps", "2", "--height", "32", "--width", "32", "--max-sequence-length", "32"]


def _ranking(scores: list[tuple[str, float]], **extra) -> dict:
    return {"family": "sd3", "ranking": [{"rank": i + 1, "layer": l, "score": s, "std": 0.0}
                                         for i, (l, s) in enumerate(scores)], **extra}


def test_weights_normalise_the_gains_over_neutral_by_hand():
    # contrast: changes -0.3, -0.2, -0.1 (neutral 0) -> gains 0.3, 0.2, 0.1 -> 0.3/0.6, 0.2/0.6, 0.1/0.6
    contrast = _ranking([("4", -0.3), ("1", -0.2), ("s2", -0.1), ("0", 0.05)])
    assert layer_weights(contrast, 3) == (["4", "1", "s2"], pytest.approx([0.5, 1 / 3, 1 / 6], abs=1e-6))
    # a distance ratio (lower is better, neutral 1): 0.52, 0.67, 0.70 -> gains 0.48, 0.33, 0.30, sum 1.11
    ratio = _ranking([("3", 0.52), ("8", 0.67), ("6", 0.70), ("10", 1.2)], neutral=1.0)
    assert layer_weights(ratio, 3)[1] == pytest.approx([0.48 / 1.11, 0.33 / 1.11, 0.30 / 1.11], abs=1e-6)
    # the fourth layer lies on the bad side of neutral: gain 0
    assert layer_weights(ratio, 4)[1] == pytest.approx([0.48 / 1.11, 0.33 / 1.11, 0.30 / 1.11, 0.0], abs=1e-6)
    # higher is better (rows in descending order), neutral 0.1: gains 0.8, 0.4, 0.1
    desc = _ranking([("2", 0.9), ("0", 0.5), ("1", 0.2)], neutral=0.1)
    assert layer_weights(desc, 3)[1] == pytest.approx([0.8 / 1.3, 0.4 / 1.3, 0.1 / 1.3], abs=1e-6)
    assert gains([0.9, 0.5], ascending=False, neutral=1.0) == [0.0, 0.0]
    with pytest.raises(ValueError, match="r.json: none of the top-2 layers scores better than the neutral score 0"):
        layer_weights(_ranking([("3", 0.52), ("8", 0.67)]), 2, "r.json")  # a ratio ranking without its neutral
    with pytest.raises(ValueError, match="--top-k 5: r.json ranks 2"):
        layer_weights(_ranking([("3", -1.0), ("8", 0.67)]), 5, "r.json")


def test_layer_variants_by_hand():
    layers, w = ("4", "1", "s2"), (0.5, 0.3, 0.2)
    assert layer_variant("single", layers, w) == (("4",), None)
    assert layer_variant("joint", layers, w) == (layers, None)
    assert layer_variant("uniform", layers, w) == (layers, (1 / 3, 1 / 3, 1 / 3))
    assert layer_variant("weighted", layers, w) == (layers, w)
    with pytest.raises(ValueError, match="must be one of single, joint, uniform, weighted"):
        layer_variant("naive", layers, w)
    names = [CSLG(layers=layer_variant(v, layers, w)[0], weights=layer_variant(v, layers, w)[1], scale=1.0).variant
             for v in ("single", "joint", "uniform", "weighted")]
    assert names == ["single", "joint", "uniform", "weighted"]
    label = method_label(CSLG(layers=layers, weights=w, scale=2.0, cfg_scale=1.0))
    assert label == "cslg weighted [4,1,s2] a=0.5/0.3/0.2 w=1 s=2"
    assert NoGuidance().variant is None and method_label(NoGuidance()) == "none"


def test_grid_cells_of_the_variants(tmp_path):
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(_ranking([("4", -0.3), ("1", -0.2), ("s2", -0.1), ("0", 0.05)])))
    flags = ["--methods", "none", "cslg", "--cslg-scales", "1,2", "--layer-weights-from", str(path), "--top-k", "3"]
    cells = cells_of(flags)
    cslg = [c for c in cells if c.name == "cslg"]
    assert len(cells) == 1 + 4 * 2 and cells[0] == NoGuidance()
    by_variant = {(c.variant, c.scale): c for c in cslg}
    assert by_variant["single", 1.0].layers == ("4",) and by_variant["single", 1.0].weights is None
    assert by_variant["joint", 2.0].layers == ("4", "1", "s2") and by_variant["joint", 2.0].weights is None
    assert by_variant["uniform", 1.0].weights == pytest.approx((1 / 3,) * 3)
    assert by_variant["weighted", 2.0].weights == pytest.approx((0.5, 1 / 3, 1 / 6), abs=1e-6)
    only = cells_of([*flags, "--layer-variants", "weighted", "single"])
    assert [c.variant for c in only if c.name == "cslg"] == ["weighted", "weighted", "single", "single"]
    for extra, message in [(["--layers", "1"], "leave out --layers"), (["--top-k", "1"], "--top-k 2 or more"),
                           (["--layer-combinations", "all"], "one layer set")]:
        with pytest.raises(SystemExit, match=message):
            cells_of([*flags, *extra])
    with pytest.raises(SystemExit, match="no method of --methods takes --layer-weights .*use --layers-from"):
        cells_of(["--methods", "cfg", "pag", "--layer-weights-from", str(path), "--top-k", "2"])
    with pytest.raises(SystemExit, match="--layer-variants: give --layer-weights-from"):
        cells_of(["--methods", "cslg", "--layers", "1", "--layer-variants", "joint"])
    with pytest.raises(SystemExit, match="--layer-weights-from: file not found"):
        cells_of(["--methods", "cslg", "--layer-weights-from", str(tmp_path / "nope.json"), "--top-k", "2"])


def test_grid_runs_the_variants_side_by_side_on_a_tiny_model(tmp_path, monkeypatch):
    import cslg.grid.run

    labels = []
    real = cslg.grid.run.contact_sheet
    monkeypatch.setattr(cslg.grid.run, "contact_sheet", lambda images, names, *a, **k: labels.append(names) or
                        real(images, names, *a, **k))
    path = tmp_path / "layers.json"
    path.write_text(json.dumps(_ranking([("2", -0.3), ("1", -0.1), ("0", 0.05)], model="tiny-sd3")))
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps(["a plain wall"]))
    manifest = sd3_script.main(["--model", "tiny-sd3", "--prompts", str(prompts), *TINY, "--seeds", "0",
                                "--methods", "cfg", "cslg", "--cfg-scales", "2", "--layer-weights-from", str(path),
                                "--top-k", "2", "--layer-combinations", "given", "--out", str(tmp_path / "run")])
    records = {r.get("variant", r["method"]): r for _, r in read_jsonl(manifest)}
    assert sorted(records) == ["cfg", "joint", "single", "uniform", "weighted"]
    assert records["weighted"]["params"]["weights"] == pytest.approx([0.75, 0.25])  # 0.3 / 0.4, 0.1 / 0.4
    assert records["uniform"]["params"]["weights"] == [0.5, 0.5] and records["single"]["params"]["layers"] == ["2"]
    assert records["joint"]["params"]["layers"] == ["2", "1"] and records["joint"]["params"]["weights"] is None
    assert len({r["image"] for r in records.values()}) == 5
    assert [name.split(" [")[0] for name in labels[0]] == ["cfg w=2", "cslg single", "cslg joint", "cslg uniform",
                                                          "cslg weighted"]
    assert "a=0.75/0.25" in labels[0][-1]
    assert len(list((tmp_path / "run" / "contact_sheets").glob("*.png"))) == 1


def test_a_bad_neutral_score_is_named():
    with pytest.raises(ValueError, match="r.json: 'neutral' must be a finite number"):
        layer_weights(_ranking([("3", -1.0), ("8", 0.67)], neutral="one"), 2, "r.json")


def test_long_labels_wrap_to_the_tile_width(tmp_path):
    from PIL import Image, ImageDraw

    from cslg.grid.contact_sheet import GAP, LABEL_HEIGHT, LABEL_LINE, _font, _wrap, contact_sheet

    label = method_label(CSLG(layers=("9", "12", "15", "4", "10"), weights=(0.36, 0.29, 0.28, 0.24, 0.18), scale=2.5,
                              cfg_scale=1.0))
    draw, font = ImageDraw.Draw(Image.new("RGB", (1, 1))), _font(13)
    lines = _wrap(draw, label, font, 200)
    assert len(lines) > 1 and " ".join(lines) == label and all(draw.textlength(l, font=font) <= 200 for l in lines)
    assert _wrap(draw, "a " * 200, font, 60)[-1].endswith("…") and len(_wrap(draw, "a " * 200, font, 60)) == 3
    image = tmp_path / "x.png"
    Image.new("RGB", (32, 32), "gray").save(image)
    sheet = contact_sheet([image, image], ["none", label], "t", tmp_path / "sheet.png", tile=208)
    height = Image.open(sheet).height
    wrapped = len(_wrap(draw, label, font, 208 - 8))
    assert height == 40 + 208 + LABEL_HEIGHT + LABEL_LINE * (wrapped - 1) + GAP
