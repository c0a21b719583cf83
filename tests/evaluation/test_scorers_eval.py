"""Step 4 with scorers: per-image columns joined to the OCR rows, the per-image-and-scorer cache, set-level scorers
per setting, summary CIs, paired comparisons against the baseline, the scale and trade-off plots, the command's
flags derived from the registry and its exit status when a scorer cannot run."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cslg.evaluation import evaluate, load_manifest
from cslg.evaluation.metrics import bootstrap_ci
from cslg.evaluation.plots import scale_lines
from cslg.io import append_jsonl
from cslg.scorers import Scorer, SetScorer
from cslg.scorers.clip import CLIPScore

from .test_eval import FakeEngine, eval_script  # noqa: F401  (eval_script: the eval.py fixture)

PROMPTS = ["a red book and a gold clock", "a hand holding a cup"]


class Red(Scorer):
    """Mean red / 255 of the image and the prompt's length (known values); counts the images it scores."""

    name, default_model = "red", "none"
    columns = ("red", "red.chars")

    def load(self):
        self.calls = []

    def score_batch(self, images, prompts):
        self.calls += [np.asarray(i)[0, 0, 0] for i in images]
        return [{"red": float(np.asarray(i)[..., 0].mean()) / 255, "red.chars": float(len(p))}
                for i, p in zip(images, prompts)]


class RedGap(SetScorer):
    """|mean red of the set - mean red of the reference| (lower is better): a set-level measure with known values."""

    name, default_model, higher_is_better = "red-gap", "none", False

    def load(self):
        self.sets = 0

    def score_set(self, images, reference):
        self.sets += 1
        assert not isinstance(images, list) and isinstance(images[0:2], list)  # opened as read, in slices
        refs = [Image.open(p) for p in sorted(Path(reference).glob("*.png"))]
        red = lambda imgs: np.mean([np.asarray(i.convert("RGB"))[..., 0].mean() for i in imgs])
        return {"red-gap": float(abs(red(images) - red(refs)))}


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def make_run(run: Path, red_of, cells, seeds=(0, 1)):
    """A run folder: a 32 px image of red value ``red_of(method, params, prompt_index, seed)`` per cell
    (method, params) x prompt x seed."""
    for method, params in cells:
        for seed in seeds:
            for index, prompt in enumerate(PROMPTS):
                tag = "_".join(f"{v}" for v in params.values())
                image = f"{method}/{tag}_{index}_seed{seed}.png"
                (run / method).mkdir(parents=True, exist_ok=True)
                red = red_of(method, params, index, seed)
                Image.new("RGB", (32, 32), (red, 40, 200)).save(run / image)
                append_jsonl(run / "manifest.jsonl", {"image": image, "prompt": prompt, "method": method,
                                                      "seed": seed, "model": "tiny", "params": {**params, "seed": seed}})
    return load_manifest(run)


CELLS = [("cfg", {"cfg_scale": 5.0}), ("cfg", {"cfg_scale": 7.0}),
         ("cslg", {"cfg_scale": 7.0, "scale": 1.0}), ("cslg", {"cfg_scale": 7.0, "scale": 3.0})]


def red_value(method, params, index, seed):
    """cfg: 100 + 10 * prompt + seed; cslg adds 20 * scale, except on prompt 1 seed 1 (a tie with cfg)."""
    base = 100 + 10 * index + seed
    if method == "cslg" and not (index == 1 and seed == 1):
        base += int(20 * params["scale"])
    return base


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return CLIPScore.save_tiny(tmp_path_factory.mktemp("clip"))


def test_clip_columns_summary_and_cache(tmp_path, tiny_clip):
    records = make_run(tmp_path / "run", red_value, CELLS)
    out = tmp_path / "run" / "eval"
    result = evaluate(records, tmp_path / "run", out, scorers=["clip"], models={"clip": str(tiny_clip)},
                      device="cpu", n_bootstrap=200)
    assert result.problems == [] and result.columns == ["clip"]
    rows = read_csv(out / "per_image.csv")
    assert len(rows) == len(records) and all(r["engine"] == "" and r["error"] == "" for r in rows)
    assert "ocr_text" not in rows[0]
    # each value is the scorer's own score of that image and prompt
    direct = CLIPScore(model=tiny_clip, device="cpu")
    images = [Image.open(tmp_path / "run" / r["image"]) for r in records]
    expected = direct.score(images, [r["prompt"] for r in records])
    np.testing.assert_allclose([float(r["clip"]) for r in rows], expected, rtol=1e-5, atol=1e-4)
    # summary: the mean and bootstrap CI of the setting's values
    summary = read_csv(out / "summary.csv")
    assert len(summary) == 4 and "ocr_similarity_mean" not in summary[0]
    first = [float(r["clip"]) for r in rows if r["method"] == "cfg" and r["setting"] == "cfg_scale=5.0"]
    mean, lo, hi = bootstrap_ci(first, 200, 0)
    assert [float(summary[0][f"clip_{s}"]) for s in ("mean", "lo", "hi")] == pytest.approx([mean, lo, hi], abs=1e-4)
    assert summary[0]["clip_n"] == "4"
    cache = [json.loads(line) for line in (out / "scores" / "clip.jsonl").read_text().splitlines()]
    assert len(cache) == len(records) and set(cache[0]) == {"image", "sha256", "prompt", "model", "values"}

    # everything is cached: the scorer is not even loaded (its weights are gone)
    (tiny_clip / "model.safetensors").rename(tiny_clip / "moved.safetensors")
    try:
        again = evaluate(records, tmp_path / "run", out, scorers=["clip"], models={"clip": str(tiny_clip)},
                         device="cpu", n_bootstrap=200)
    finally:
        (tiny_clip / "moved.safetensors").rename(tiny_clip / "model.safetensors")
    assert again.problems == [] and again.scores[0].scored == 0
    assert [r["clip"] for r in again.rows] == pytest.approx([float(r["clip"]) for r in rows], abs=1e-4)


def test_only_new_scorers_and_changed_images_are_scored(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS[:2], seeds=(0,))
    out = tmp_path / "eval"
    red = Red(device="cpu")
    evaluate(records, tmp_path / "run", out, scorers=[red], n_bootstrap=0)
    assert len(red.calls) == 4
    # a changed image (same path) is scored again, the others come from the cache
    Image.new("RGB", (32, 32), (7, 0, 0)).save(tmp_path / "run" / records[1]["image"])
    red.calls.clear()
    result = evaluate(records, tmp_path / "run", out, scorers=[red], n_bootstrap=0)
    assert red.calls == [7] and result.rows[1]["red"] == pytest.approx(7 / 255)
    # a second scorer scores only itself
    other = Red(device="cpu")
    other.name = "red-too"
    red.calls.clear()
    evaluate(records, tmp_path / "run", out, scorers=[red, other], n_bootstrap=0)
    assert red.calls == [] and len(other.calls) == 4
    # a torn last line (a crash mid-append) is cut off and that image is scored again
    cache = out / "scores" / "red.jsonl"
    cache.write_bytes(cache.read_bytes()[:-20])
    evaluate(records, tmp_path / "run", out, scorers=[red], n_bootstrap=0)
    assert len(red.calls) == 1
    red.calls.clear()
    evaluate(records, tmp_path / "run", out, scorers=[red], n_bootstrap=0, force=True)
    assert len(red.calls) == 4


def test_scorer_values_join_the_ocr_rows_of_each_engine(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    for record in records:
        record["expected_text"] = ["HELLO"]
    engines = [FakeEngine("one", reply=lambda p: "HELLO"), FakeEngine("two", reply=lambda p: "HELL")]
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", engines, scorers=[Red(device="cpu")],
                      n_bootstrap=0)
    rows = read_csv(tmp_path / "eval" / "per_image.csv")
    assert [(r["engine"], r["image"]) for r in rows] == [(e, rec["image"]) for e in ("one", "two") for rec in records]
    for r in rows:  # the same image has the same scorer value on every engine's row
        assert float(r["red"]) == pytest.approx(int(r["image"].split("_")[1]) * 10 / 255 + 100 / 255)
        assert r["ocr_similarity"] != ""
    assert list(rows[0]).index("red") > list(rows[0]).index("exact_match_cased")
    summary = {s["engine"]: s for s in result.summary}
    assert summary["one"]["red_mean"] == summary["two"]["red_mean"]


def test_paired_against_the_baseline_on_the_same_prompt_and_seed(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS)
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[Red(device="cpu")], n_bootstrap=500)
    rows = [r for r in read_csv(tmp_path / "eval" / "paired.csv") if r["measure"] == "red"]
    # cslg (cfg_scale 7) is paired with cfg at cfg_scale 7 only; 4 pairs per setting, one a tie
    assert [(r["label"], r["baseline"]) for r in rows] == [("cslg (scale=1.0)", "cfg (cfg_scale=7.0)"),
                                                           ("cslg (scale=3.0)", "cfg (cfg_scale=7.0)")]
    for row, scale in zip(rows, (1.0, 3.0)):
        diffs = [20 * scale / 255] * 3 + [0.0]
        assert row["n_pairs"] == "4"
        assert float(row["win_rate"]) == pytest.approx(3.5 / 4)
        assert float(row["mean_diff"]) == pytest.approx(np.mean(diffs), abs=1e-4)
        lo, hi = bootstrap_ci(diffs, 500, 0)[1:]
        assert (float(row["mean_diff_lo"]), float(row["mean_diff_hi"])) == pytest.approx((lo, hi), abs=1e-4)
        assert row["higher_is_better"] == "True"
    # the prompt-length column: no difference, every pair a tie
    chars = [r for r in result.paired if r["measure"] == "red.chars"]
    assert len(chars) == 2 and all(r["mean_diff"] == 0 and r["win_rate"] == 0.5 for r in chars)
    # summary: every column's mean and bootstrap CI over its setting's values
    first = [r for r in result.rows if r["method"] == "cfg" and r["setting"] == "cfg_scale=5.0"]
    for column in ("red", "red.chars"):
        stats = bootstrap_ci([r[column] for r in first], 500, 0)
        assert [result.summary[0][f"{column}_{s}"] for s in ("mean", "lo", "hi")] == pytest.approx(stats, abs=1e-4)
    assert result.summary[0]["red.chars_mean"] == pytest.approx(np.mean([len(p) for p in PROMPTS]))


def test_lower_is_better_flips_the_win_and_a_missing_baseline_is_a_note(tmp_path):
    class Dark(Red):
        name, columns, higher_is_better = "dark", ("dark",), False

        def score_batch(self, images, prompts):
            return [float(np.asarray(i)[..., 0].mean()) for i in images]

    records = make_run(tmp_path / "run", red_value, [CELLS[1], CELLS[3]], seeds=(0,))
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[Dark(device="cpu")], n_bootstrap=0)
    assert [r["win_rate"] for r in result.paired] == [0.0]  # cslg is redder: worse on a lower-is-better measure
    alone = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[Dark(device="cpu")], n_bootstrap=0,
                     baseline="pag")
    assert alone.paired == [] and not (tmp_path / "eval" / "paired.csv").exists()
    assert any("'pag' is not in the run" in note for note in alone.notes)


def test_set_level_scorer_per_setting_against_the_reference(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS[:2], seeds=(0,))
    reference = tmp_path / "reference"
    reference.mkdir()
    for i, red in enumerate((100, 110)):
        Image.new("RGB", (32, 32), (red, 0, 0)).save(reference / f"{i}.png")
    gap = RedGap(device="cpu")
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[gap], reference=reference,
                      n_bootstrap=0)
    assert result.set_level == ["red-gap"] and gap.sets == 2
    # both cfg settings: images of red 100 and 110 against a reference of mean 105
    assert [s["red-gap"] for s in result.summary] == [0.0, 0.0]
    again = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[gap], reference=reference, n_bootstrap=0)
    assert gap.sets == 2 and again.summary[0]["red-gap"] == 0.0  # cached per group
    Image.new("RGB", (32, 32), (200, 0, 0)).save(reference / "1.png")  # a changed reference: scored again
    changed = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[gap], reference=reference,
                       n_bootstrap=0)
    assert gap.sets == 4 and changed.summary[0]["red-gap"] == pytest.approx(abs(105 - 150), abs=1e-3)
    missing = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=[gap], n_bootstrap=0)
    assert missing.problems == ["red-gap: a set-level scorer needs a reference folder (--reference DIR)"]


def test_a_missing_model_is_one_line_and_the_others_still_run(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    (tmp_path / "empty").mkdir()
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=["clip", Red(device="cpu")],
                      models={"clip": tmp_path / "empty"}, device="cpu", n_bootstrap=0, tradeoff=("clip", "red"))
    assert len(result.problems) == 1 and "\n" not in result.problems[0]
    assert result.notes == ["no trade-off plot: no setting has both clip and red"]
    assert result.problems[0].startswith("clip: cannot load model") and "--clip-model" in result.problems[0]
    assert result.columns == ["red", "red.chars"] and all(r["red"] is not None for r in result.rows)
    recorded = json.loads((tmp_path / "eval" / "eval.json").read_text())
    assert [(s["name"], s["model"], s["problem"] != "") for s in recorded["scorers"]] == [
        ("clip", str(tmp_path / "empty"), True), ("red", "none", False)]
    assert recorded["scorers"][0]["citation"].startswith("Hessel et al. 2021") and "torch" in recorded["versions"]


def test_scale_plots_and_tradeoff(tmp_path):
    records = make_run(tmp_path / "run", red_value, CELLS)
    out = tmp_path / "eval"
    result = evaluate(records, tmp_path / "run", out, scorers=[Red(device="cpu")], n_bootstrap=0,
                      tradeoff=("red", "red.chars"))
    assert {"scale_red", "tradeoff"} <= set(result.files)
    assert (out / "scale_red.png").is_file() and (out / "tradeoff_red_vs_red.chars.png").is_file()
    lines = scale_lines(result.summary)
    # cfg's scale is its cfg_scale (the one that varies), cslg's its own scale, not the fixed cfg_scale
    assert [(label, [x for x, _ in points]) for label, points in lines.items()] == [
        ("cfg [cfg_scale]", [5.0, 7.0]), ("cslg [scale]", [1.0, 3.0])]
    assert [row["red_mean"] for _, row in lines["cslg [scale]"]] == pytest.approx(
        [np.mean([red_value("cslg", {"scale": s}, i, seed) for i in (0, 1) for seed in (0, 1)]) / 255
         for s in (1.0, 3.0)], abs=1e-4)
    with pytest.raises(ValueError, match="tradeoff: 'clip' is not scored"):
        evaluate(records, tmp_path / "run", out, scorers=[Red(device="cpu")], tradeoff=("red", "clip"))


def test_scale_lines_split_by_the_other_varying_params():
    summary = [{"engine": "", "model": "m", "method": "cslg", "label": "x", "param.cfg_scale": c,
                "param.scale": s, "param.layers": layers}
               for layers in ("[5]", "[9]") for s in (3.0, 1.0) for c in (7.0,)]
    lines = scale_lines(summary)
    assert list(lines) == ["cslg [scale] (layers=[5])", "cslg [scale] (layers=[9])"]
    assert [x for x, _ in lines["cslg [scale] (layers=[5])"]] == [1.0, 3.0]  # sorted by scale
    assert list(scale_lines(summary, scale_param="cfg_scale")) == ["cslg [cfg_scale] (scale=3.0, layers=[5])",
                                                                   "cslg [cfg_scale] (scale=1.0, layers=[5])",
                                                                   "cslg [cfg_scale] (scale=3.0, layers=[9])",
                                                                   "cslg [cfg_scale] (scale=1.0, layers=[9])"]


@pytest.mark.parametrize("scorers, kwargs, error, match", [
    (["nope"], {}, ValueError, "unknown scorer 'nope'"),
    ("clip", {}, TypeError, "scorers must be a list"),
    (["clip", "clip"], {}, ValueError, "'clip' is given twice"),
    (["clip"], {"models": {"red": "x"}}, ValueError, "models: 'red' is not among the scorers"),
    (["clip"], {"tradeoff": ("clip",)}, ValueError, "tradeoff: give two measures"),
    ([], {}, ValueError, "nothing to score"),
])
def test_bad_scorer_arguments(tmp_path, scorers, kwargs, error, match):
    records = make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    with pytest.raises(error, match=match):
        evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=scorers, **kwargs)


# --------------------------------------------------------------------------- command line


def test_cli_scores_like_the_api(tmp_path, eval_script, tiny_clip, capsys):
    make_run(tmp_path / "run", red_value, CELLS[:2], seeds=(0,))
    result = eval_script.main(["--run", str(tmp_path / "run"), "--scorers", "clip", "--clip-model", str(tiny_clip),
                               "--scorer-device", "cpu", "--bootstrap", "100", "--out", str(tmp_path / "cli")])
    api = evaluate(load_manifest(tmp_path / "run"), tmp_path / "run", tmp_path / "api", scorers=["clip"],
                   models={"clip": tiny_clip}, device="cpu", n_bootstrap=100)
    assert result.summary == api.summary
    assert "clip " in capsys.readouterr().out


def test_cli_missing_model_exits_1_with_one_line(tmp_path, eval_script, capsys):
    make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as caught:
        eval_script.main(["--run", str(tmp_path / "run"), "--scorers", "clip", "--clip-model", str(tmp_path / "empty")])
    assert "1 scorer(s) could not run (clip)" in str(caught.value.code)
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: clip")]
    assert len(err) == 1 and "--clip-model" in err[0]
    assert (tmp_path / "run" / "eval" / "per_image.csv").is_file()  # what could be written is written


@pytest.mark.parametrize("flags, match", [
    (["--clip-model", "x"], "--clip-model is given but clip is not in --scorers"),
    (["--scorers", "clip", "--engine", "ppocr"], "add ocr to --scorers"),
    (["--scorers", "clip", "--reference", "."], "--reference goes with a set-level scorer"),
    (["--scorer-device", "cpu"], "--scorer-device / --scorer-batch-size go with"),
    (["--scorers", "hpsv9"], "invalid choice: 'hpsv9'"),
])
def test_cli_flags_that_would_do_nothing_are_errors(tmp_path, eval_script, capsys, flags, match):
    make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    with pytest.raises(SystemExit) as caught:
        eval_script.main(["--run", str(tmp_path / "run"), *flags])
    assert caught.value.code == 2 and match in capsys.readouterr().err


def test_cli_has_a_model_flag_for_every_registered_scorer(eval_script):
    import argparse

    import cslg.scorers
    from cslg.cli import eval as command

    parser = command.configure(argparse.ArgumentParser())
    flags = {option for action in parser._actions for option in action.option_strings}
    assert {f"--{name}-model" for name in cslg.scorers.names()} <= flags


class Scaled(Red):
    """``Red`` times a keyword option: a scorer with an option."""

    name, columns = "scaled", ("scaled",)

    def __init__(self, factor: float = 1.0, **kwargs):
        self.factor = factor
        super().__init__(**kwargs)

    def score_batch(self, images, prompts):
        return [self.factor * float(np.asarray(i)[..., 0].mean()) for i in images]


def test_scorer_options_reach_the_constructor_and_the_cache_key(tmp_path, monkeypatch):
    import cslg.scorers

    monkeypatch.setitem(cslg.scorers.REGISTRY, "scaled", ("clip", "CLIPScore"))  # a registered name ...
    monkeypatch.setattr(cslg.scorers, "scorer_class", lambda name: Scaled)  # ... whose class is Scaled
    monkeypatch.setattr("cslg.evaluation.scores.scorer_class", lambda name: Scaled)
    records = make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    one = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=["scaled"], n_bootstrap=0)
    two = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=["scaled"], n_bootstrap=0,
                   options={"scaled": {"factor": 2.0}})
    assert two.scores[0].scored == 2  # other options: not the cached values
    assert [r["scaled"] for r in two.rows] == pytest.approx([2 * r["scaled"] for r in one.rows])
    bad = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=["scaled"], n_bootstrap=0,
                   options={"scaled": {"colour": 1}})
    assert len(bad.problems) == 1 and bad.problems[0].startswith("scaled: ") and "colour" in bad.problems[0]


def test_cli_scorer_option_needs_name_key_value(tmp_path, eval_script, capsys):
    make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    for flag, match in (("clip", "expected NAME.KEY=VALUE"), ("pickscore.x=1", "pickscore is not in --scorers")):
        with pytest.raises(SystemExit) as caught:
            eval_script.main(["--run", str(tmp_path / "run"), "--scorers", "clip", "--scorer-option", flag])
        assert caught.value.code == 2 and match in capsys.readouterr().err


def test_a_scorer_whose_package_is_missing_is_one_line(tmp_path, monkeypatch):
    import cslg.scorers

    monkeypatch.setitem(cslg.scorers.REGISTRY, "absent", ("no_such_scorer_module", "Absent"))
    records = make_run(tmp_path / "run", red_value, CELLS[:1], seeds=(0,))
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", scorers=["absent", Red(device="cpu")],
                      n_bootstrap=0)
    assert result.problems == ["absent: cannot be imported (No module named 'cslg.scorers.no_such_scorer_module')"]
    assert result.columns == ["red", "red.chars"]


def test_paired_ocr_similarity_engine_by_engine(tmp_path):
    records = make_run(tmp_path / "run", red_value, [CELLS[1], CELLS[2]], seeds=(0,))
    for record in records:
        record["expected_text"] = ["HELLO"]
    read = {"one": {"cfg": "HELLX", "cslg": "HELLO"}, "two": {"cfg": "HELLO", "cslg": "HELLO"}}
    engines = [FakeEngine(name, reply=lambda p, name=name: read[name][Path(p).parent.name]) for name in read]
    result = evaluate(records, tmp_path / "run", tmp_path / "eval", engines, scorers=[Red(device="cpu")],
                      n_bootstrap=0)
    ocr = [(r["engine"], r["n_pairs"], r["win_rate"], round(r["mean_diff"], 4)) for r in result.paired
           if r["measure"] == "ocr_similarity"]
    assert ocr == [("one", 2, 1.0, 0.2), ("two", 2, 0.5, 0.0)]  # SequenceMatcher("HELLX", "HELLO") = 0.8
    assert [r["engine"] for r in result.paired if r["measure"] == "red"] == ["one"]  # scorer columns: once
