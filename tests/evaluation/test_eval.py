"""Step 4 end to end: manifest -> OCR -> CSV tables and plots, resuming, error rows, --images mode."""

import csv
import importlib.util
import json
from pathlib import Path

import pytest

import cslg.cli
import cslg.evaluation.ocr
from cslg import evaluation
from cslg.evaluation import evaluate, expected_text, flatten_params, load_manifest, records_from_images
from cslg.io import append_jsonl
from cslg.evaluation.ocr import render_text
from cslg.evaluation.plots import heatmap_grid
from cslg.text import prompt_slug

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["A red sign that says 'HELLO'", 'A mug printed with "COFFEE TIME"']


@pytest.fixture(scope="module")
def eval_script():
    spec = importlib.util.spec_from_file_location("eval_script", ROOT / "eval.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeEngine:
    """Counts reads; answers ``reply(path)`` (default: the file name's first part, upper-cased)."""

    def __init__(self, name="fake", reply=None, fail_on_call=None):
        self.name, self.calls = name, []
        self.reply = reply or (lambda path: Path(path).stem.split("_")[0].upper())
        self.fail_on_call = fail_on_call

    def read(self, image):
        self.calls.append(Path(image).name)
        if len(self.calls) == self.fail_on_call:
            raise KeyboardInterrupt
        return self.reply(image)


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def write_manifest(run, records):
    for record in records:
        append_jsonl(run / "manifest.jsonl", record)


def make_run(run, text_for, methods=("cfg", "cslg"), seeds=(0, 1), missing=()):
    """A run folder: one rendered image per prompt x method x seed; ``missing`` images are left out."""
    for method in methods:
        for seed in seeds:
            for prompt in PROMPTS:
                image = f"{method}/{prompt_slug(prompt)}_seed{seed}.png"
                if image not in missing:
                    (run / method).mkdir(parents=True, exist_ok=True)
                    render_text(text_for(method, prompt)).save(run / image)
                params = {"cfg_scale": 7.0, "cslg_scale": 2.0 if method == "cslg" else 0.0, "layers": [9, 12]}
                record = {"image": image, "prompt": prompt, "method": method, "seed": seed, "model": "tiny-sd3"}
                write_manifest(run, [{**record, "params": {**params, "seed": seed}}])


# --------------------------------------------------------------------------- manifest


def test_missing_manifest_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "manifest.jsonl")):
        load_manifest(tmp_path)


def test_bad_json_line_names_file_and_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "prompt": "p", "method": "m"}\n{"image": oops\n')
    with pytest.raises(ValueError, match=r"manifest\.jsonl: line 2"):
        load_manifest(tmp_path)


def test_record_without_required_key_names_line_and_key(tmp_path):
    write_manifest(tmp_path, [{"image": "a.png", "prompt": "p", "method": "m"}, {"image": "b.png", "prompt": "p"}])
    with pytest.raises(ValueError, match=r"line 2 lacks the key\(s\) method"):
        load_manifest(tmp_path)


def test_duplicate_images_keep_the_last_record(tmp_path):
    records = [
        {"image": "a.png", "prompt": "old 'A'", "method": "m"},
        {"image": "b.png", "prompt": "'B'", "method": "m"},
        {"image": "a.png", "prompt": "new 'A'", "method": "m"},
    ]
    write_manifest(tmp_path, records)
    records = load_manifest(tmp_path)
    assert [(r["image"], r["prompt"]) for r in records] == [("a.png", "new 'A'"), ("b.png", "'B'")]


def test_expected_text_from_manifest_or_prompt():
    assert expected_text({"prompt": "a sign 'OPEN'"}) == ["OPEN"]
    assert expected_text({"prompt": "a sign 'OPEN'", "expected_text": ["CLOSED"]}) == ["CLOSED"]
    assert expected_text({"prompt": "no quotes", "expected_text": None}) == []


def test_flatten_params():
    flat = flatten_params({"cfg_scale": 7.0, "layers": [9, 12], "slg": {"start": 0.01, "stop": 0.2}, "seed": 3})
    assert flat == {"cfg_scale": 7.0, "layers": "[9, 12]", "slg.start": 0.01, "slg.stop": 0.2, "seed": 3}
    assert "seed" not in evaluation.setting_params(flat)


# --------------------------------------------------------------------------- end to end


def test_end_to_end_with_easyocr_then_resume(tmp_path, eval_script):
    run = tmp_path / "run"
    missing = f"cfg/{prompt_slug(PROMPTS[0])}_seed1.png"
    rendered = {"cfg": ["HELLX", "COFFEE TIMX"], "cslg": ["HELLO", "COFFEE TIME"]}  # cfg misspells the text
    make_run(run, lambda method, prompt: rendered[method][PROMPTS.index(prompt)], missing={missing})

    result = eval_script.main(["--run", str(run), "--no-gpu", "--bootstrap", "200"])

    out = run / "eval"
    assert {p.name for p in out.iterdir()} == {"per_image.csv", "summary.csv", "per_prompt.csv", "methods_bar.png",
                                             "paired.csv", "eval.json"}
    assert result.files["summary"] == out / "summary.csv"
    per_image = read_csv(out / "per_image.csv")
    assert len(per_image) == 8
    errors = [row for row in per_image if row["error"]]
    assert [row["image"] for row in errors] == [missing] and "missing image" in errors[0]["error"]
    assert errors[0]["ocr_similarity"] == ""
    assert per_image[0]["param.layers"] == "[9, 12]" and per_image[0]["expected_text"] == "HELLO"
    cslg_rows = [row for row in per_image if row["method"] == "cslg"]
    assert all(float(row["ocr_similarity"]) >= 0.9 for row in cslg_rows)

    summary = {row["method"]: row for row in read_csv(out / "summary.csv")}
    assert list(summary) == ["cfg", "cslg"]
    assert (summary["cfg"]["n"], summary["cfg"]["n_errors"]) == ("3", "1")
    assert (summary["cslg"]["n"], summary["cslg"]["n_errors"]) == ("4", "0")
    assert summary["cslg"]["setting"] == "cfg_scale=7.0, cslg_scale=2.0, layers=[9, 12]"
    assert "param.seed" not in summary["cslg"]
    assert float(summary["cslg"]["ocr_similarity_mean"]) > float(summary["cfg"]["ocr_similarity_mean"])
    for metric in ("ocr_similarity", "word_f1", "exact_match_cased"):
        lo, mean, hi = (float(summary["cfg"][f"{metric}_{s}"]) for s in ("lo", "mean", "hi"))
        assert lo <= mean <= hi

    per_prompt = read_csv(out / "per_prompt.csv")
    assert [row["prompt"] for row in per_prompt] == PROMPTS
    assert list(per_prompt[0]) == ["prompt", "expected_text", "cfg", "cslg"]  # one setting per method: no params
    assert float(per_prompt[0]["cfg"]) == pytest.approx(0.8, abs=0.05)

    # A second run reads no image again (the missing one is retried but still missing) ...
    again = FakeEngine(name="easyocr")
    second = evaluate(load_manifest(run), run, out, again)
    assert again.calls == []
    assert [row["ocr_text"] for row in read_csv(out / "per_image.csv")] == [row["ocr_text"] for row in per_image]
    assert second.summary[0]["ocr_similarity_mean"] == pytest.approx(float(summary["cfg"]["ocr_similarity_mean"]))
    # ... a different engine or --force reads every image.
    other = FakeEngine(name="other")
    evaluate(load_manifest(run), run, out, other)
    assert len(other.calls) == 7
    forced = FakeEngine(name="other")
    evaluate(load_manifest(run), run, out, forced, force=True)
    assert len(forced.calls) == 7


def test_interrupted_run_resumes_where_it_stopped(tmp_path):
    run = tmp_path / "run"
    make_run(run, lambda method, prompt: "HELLO", methods=("cfg",), seeds=(0, 1, 2))
    with pytest.raises(KeyboardInterrupt):
        evaluate(load_manifest(run), run, run / "eval", FakeEngine(fail_on_call=4))
    assert len(read_csv(run / "eval" / "per_image.csv")) == 3

    engine = FakeEngine()
    result = evaluate(load_manifest(run), run, run / "eval", engine)
    assert len(engine.calls) == 3
    assert len(result.rows) == len(read_csv(run / "eval" / "per_image.csv")) == 6


def test_corrupt_image_and_prompt_without_text_become_error_rows(tmp_path):
    render_text("OPEN").save(tmp_path / "open.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    records = [
        {"image": "open.png", "prompt": "a sign 'OPEN'", "method": "m"},
        {"image": "broken.png", "prompt": "a sign 'OPEN'", "method": "m"},
        {"image": "unused.png", "prompt": "a sign without quotes", "method": "m"},
    ]
    write_manifest(tmp_path, records)
    engine = FakeEngine()
    result = evaluate(load_manifest(tmp_path), tmp_path, tmp_path / "eval", engine)
    assert engine.calls == ["open.png"]
    assert [row["error"].split(" ")[0] for row in result.rows] == ["", "unreadable", "no"]
    assert (result.summary[0]["n"], result.summary[0]["n_errors"]) == (1, 2)
    assert result.summary[0]["ocr_similarity_mean"] == 1.0


def test_cfg_x_cslg_sweep_draws_a_heatmap(tmp_path):
    records = []
    for cfg in (3.0, 7.0):
        for scale in (0.0, 1.0, 2.0):
            for method in ("cslg", "slg"):  # slg's scale has the same name: it must not enter the cslg heatmap
                name = f"img_{method}_cfg{cfg}_s{scale}.png"
                render_text("HI" if method == "cslg" else "XX").save(tmp_path / name)
                params = {"cfg_scale": cfg, "scale": scale}
                records.append({"image": name, "prompt": "a sign 'HI'", "method": method, "params": params})
    write_manifest(tmp_path, records)
    engine = FakeEngine(reply=lambda path: "HI" if "cslg" in Path(path).name else "XX")
    result = evaluate(load_manifest(tmp_path), tmp_path, tmp_path / "eval", engine)
    assert result.files["heatmap"].stat().st_size > 0
    assert [s["label"] for s in result.summary][:3] == [
        "cslg (cfg_scale=3.0, scale=0.0)", "slg (cfg_scale=3.0, scale=0.0)", "cslg (cfg_scale=3.0, scale=1.0)"]
    assert len(result.summary) == 12
    cfg_scales, cslg_scales, grid, layer_sets = heatmap_grid(result.rows)
    assert cfg_scales == [3.0, 7.0] and cslg_scales == [0.0, 1.0, 2.0] and layer_sets == 1
    assert (grid == 1.0).all()  # the slg rows (OCR "XX", similarity 0) are not averaged in
    legacy = [{**r, "param.cslg_scale": r.pop("param.scale")} for r in [dict(r) for r in result.rows]]
    assert heatmap_grid(legacy)[1] == [0.0, 1.0, 2.0]  # manifests of cslg 0.2 called it cslg_scale


def test_labels_show_the_params_that_vary_within_a_method(tmp_path):
    settings = [("cfg", {"cfg_scale": 7.0, "steps": 28}), ("cslg", {"cfg_scale": 7.0, "layers": [9], "steps": 28}),
                ("cslg", {"cfg_scale": 7.0, "layers": [12], "steps": 28})]
    records = []
    for i, (method, params) in enumerate(settings):
        render_text("HI").save(tmp_path / f"{i}.png")
        records.append({"image": f"{i}.png", "prompt": "a sign 'HI'", "method": method, "params": params})
    write_manifest(tmp_path, records)
    result = evaluate(load_manifest(tmp_path), tmp_path, tmp_path / "eval", FakeEngine(reply=lambda path: "HI"))
    assert [s["label"] for s in result.summary] == ["cfg", "cslg (layers=[9])", "cslg (layers=[12])"]
    assert result.summary[1]["setting"] == "cfg_scale=7.0, layers=[9], steps=28"


# --------------------------------------------------------------------------- --images mode


def test_images_mode_maps_files_to_prompts(tmp_path, eval_script, monkeypatch):
    images = tmp_path / "images"
    prompts_file = tmp_path / "prompts.json"
    prompts = ["a sign 'ZERO'", {"prompt": "a sign 'ONE'", "expected_text": ["UNO"]}, "a sign 'TWO'"]
    prompts_file.write_text(json.dumps(prompts))
    (images / "cfg").mkdir(parents=True)
    (images / "slg" / prompt_slug(prompts[0])).mkdir(parents=True)
    render_text("ZERO").save(images / "0000_cslg.png")
    render_text("UNO").save(images / "cfg" / "0001_seed3.png")
    render_text("TWO").save(images / f"{prompt_slug(prompts[2])}_s9.png")
    render_text("ZERO").save(images / "slg" / prompt_slug(prompts[0]) / "seed7.png")

    records = records_from_images(images, prompts_file)
    assert [(r["prompt"], r["method"], r["seed"], r.get("expected_text")) for r in records] == [
        ("a sign 'ZERO'", "images", None, None),
        ("a sign 'TWO'", "images", None, None),
        ("a sign 'ONE'", "cfg", 3, ["UNO"]),
        ("a sign 'ZERO'", "slg", 7, None),
    ]

    texts = {"0000_cslg": "ZERO", "0001_seed3": "UNO", f"{prompt_slug(prompts[2])}_s9": "TWO", "seed7": "ZERO"}
    engine = FakeEngine(reply=lambda path: texts[Path(path).stem])
    monkeypatch.setattr(cslg.evaluation.ocr, "get_engine", lambda name, gpu: engine)
    for _ in range(2):  # the second run must not mistake the plots in images/eval for images
        result = eval_script.main(["--images", str(images), "--prompts", str(prompts_file)])
    assert len(engine.calls) == 4
    assert [row["ocr_similarity"] for row in result.rows] == [1.0, 1.0, 1.0, 1.0]
    assert (images / "eval" / "methods_bar.png").is_file()


def test_images_mode_fails_on_an_unmapped_image(tmp_path):
    (tmp_path / "prompts.json").write_text(json.dumps(["a sign 'A'"]))
    render_text("A").save(tmp_path / "0000.png")
    render_text("B").save(tmp_path / "0001_b.png")
    render_text("C").save(tmp_path / "cat.png")
    with pytest.raises(ValueError, match=r"2 image\(s\) .* \(0001_b\.png, cat\.png\); an image maps"):
        records_from_images(tmp_path, tmp_path / "prompts.json")


def test_cli_needs_prompts_with_images(tmp_path, eval_script):
    with pytest.raises(SystemExit):
        eval_script.main(["--images", str(tmp_path)])
    with pytest.raises(SystemExit):
        eval_script.main(["--run", str(tmp_path), "--images", str(tmp_path)])


def test_cli_reports_a_missing_manifest_without_traceback(tmp_path, eval_script):
    with pytest.raises(SystemExit, match=r"error: no manifest at .*manifest\.jsonl"):
        eval_script.main(["--run", str(tmp_path)])


# --------------------------------------------------------------------------- several engines


def two_engines(fail_on_call=None):
    """"exact" reads every image right (COFFEE TIME with "!!"); "sloppy" reads HELLO as HELLX."""
    exact = FakeEngine("exact", reply=lambda path: "HELLO" if "hello" in Path(path).name else "COFFEE TIME!!")
    sloppy = FakeEngine("sloppy", reply=lambda path: "HELLX" if "hello" in Path(path).name else "COFFEE TIME",
                        fail_on_call=fail_on_call)
    return exact, sloppy


def test_several_engines_write_rows_per_engine_and_their_agreement(tmp_path):
    run = tmp_path / "run"
    make_run(run, lambda method, prompt: "unused", methods=("cfg",), missing={f"cfg/{prompt_slug(PROMPTS[1])}_seed1.png"})
    result = evaluate(load_manifest(run), run, run / "eval", list(two_engines()), n_bootstrap=50)

    per_image = read_csv(run / "eval" / "per_image.csv")
    assert [row["engine"] for row in per_image] == ["exact"] * 4 + ["sloppy"] * 4
    assert [row["image"] for row in per_image[:4]] == [row["image"] for row in per_image[4:]]

    agreement = read_csv(result.files["agreement"])  # hello seed0, coffee seed0, hello seed1, missing coffee
    assert [row["ocr_text.sloppy"] for row in agreement] == ["HELLX", "COFFEE TIME", "HELLX", ""]
    assert [row["exact_match.exact"] for row in agreement] == ["1.0", "1.0", "1.0", ""]
    # SequenceMatcher ratios: "hello"~"hellx" 2·4/10, "coffee time!!"~"coffee time" 2·11/24; the
    # exact_match verdicts differ on HELLX and agree on COFFEE TIME (punctuation is not a word).
    texts = [float(row["text_agreement"]) for row in agreement[:3]]
    assert texts == pytest.approx([0.8, 22 / 24, 0.8]) and agreement[3]["text_agreement"] == ""
    assert [row["exact_match_agreement"] for row in agreement] == ["0.0", "1.0", "0.0", ""]
    assert agreement[3]["error"].startswith("exact: missing image") and "sloppy: missing image" in agreement[3]["error"]

    summary = {row["engine"]: row for row in read_csv(run / "eval" / "summary.csv")}
    assert [s["label"] for s in result.summary] == ["cfg [exact]", "cfg [sloppy]"]
    for row in summary.values():  # the same agreement on each engine's row: mean over the 3 scored images
        assert float(row["text_agreement_mean"]) == pytest.approx((0.8 + 22 / 24 + 0.8) / 3, abs=1e-4)
        assert float(row["exact_match_agreement_mean"]) == pytest.approx(1 / 3, abs=1e-4)
        assert row["n"] == "3"
    assert float(summary["exact"]["exact_match_mean"]) == 1.0
    assert float(summary["sloppy"]["exact_match_mean"]) == pytest.approx(1 / 3, abs=1e-4)
    assert list(read_csv(run / "eval" / "per_prompt.csv")[0])[2:] == ["cfg [exact]", "cfg [sloppy]"]
    assert "engines agree: text 0.839, exact_match 0.333" in evaluation.format_summary(result.summary)

    # One engine again: no agreement file or columns, the rows of the other engine are dropped.
    single = evaluate(load_manifest(run), run, run / "eval", FakeEngine("exact"), n_bootstrap=0)
    assert "agreement" not in single.files and not (run / "eval" / "agreement.csv").exists()
    assert "text_agreement_mean" not in single.summary[0] and single.summary[0]["label"] == "cfg"
    assert {row["engine"] for row in read_csv(run / "eval" / "per_image.csv")} == {"exact"}


def test_several_engines_resume_each_engine(tmp_path):
    run = tmp_path / "run"
    make_run(run, lambda method, prompt: "unused", methods=("cfg",), seeds=(0, 1, 2))
    with pytest.raises(KeyboardInterrupt):  # the second engine stops at its third image
        evaluate(load_manifest(run), run, run / "eval", list(two_engines(fail_on_call=3)))
    assert [row["engine"] for row in read_csv(run / "eval" / "per_image.csv")] == ["exact"] * 6 + ["sloppy"] * 2

    exact, sloppy = two_engines()
    result = evaluate(load_manifest(run), run, run / "eval", [exact, sloppy])
    assert (len(exact.calls), len(sloppy.calls)) == (0, 4)
    assert len(result.rows) == 12 and len(result.agreement) == 6


def test_engines_need_distinct_names(tmp_path):
    with pytest.raises(ValueError, match="distinct names"):
        evaluate([], tmp_path, tmp_path / "eval", [FakeEngine("a"), FakeEngine("a")])


def test_summary_has_mario_f_measure_of_mean_precision_and_recall(tmp_path):
    # Image 1 reads "HELLO extra": P 1/2, R 1 (F1 2/3); image 2 reads "COFFEE": P 1, R 1/2 (F1 2/3).
    # MARIO-Eval: mean P = mean R = 3/4, F = 3/4, while the mean per-image F1 is 2/3.
    records = []
    for name, prompt in (("a.png", PROMPTS[0]), ("b.png", PROMPTS[1])):
        render_text("x").save(tmp_path / name)
        records.append({"image": name, "prompt": prompt, "method": "m"})
    replies = {"a.png": "HELLO extra", "b.png": "COFFEE"}
    result = evaluate(records, tmp_path, tmp_path / "eval", FakeEngine(reply=lambda path: replies[Path(path).name]))
    summary = result.summary[0]
    assert summary["word_f1_mean"] == pytest.approx(2 / 3, abs=1e-4)
    assert summary["word_f_measure"] == 0.75
    assert summary["word_f_measure_lo"] <= 0.75 <= summary["word_f_measure_hi"]
    assert summary["sentence_accuracy_mean"] == 0.0


def test_cli_engine_all_scores_with_both_real_engines(tmp_path, eval_script):
    images = tmp_path / "images"
    images.mkdir()
    (tmp_path / "prompts.json").write_text(json.dumps(["a sign 'OPEN'", "a sign 'SWEET TOOTH'"]))
    render_text("OPEN").save(images / "0000.png")
    render_text("SWEET TOOTH").save(images / "0001.png")
    result = eval_script.main(["--images", str(images), "--prompts", str(tmp_path / "prompts.json"),
                               "--engine", "all", "--no-gpu", "--bootstrap", "50"])
    assert [row["engine"] for row in result.rows] == ["easyocr", "easyocr", "ppocr", "ppocr"]
    assert all(row["exact_match"] == 1.0 for row in result.rows)
    assert [row["exact_match_agreement"] for row in result.agreement] == [1.0, 1.0]
    assert all(row["text_agreement"] >= 0.9 for row in result.agreement)
    assert (images / "eval" / "agreement.csv").is_file()


def test_cli_engine_choices():
    parser = cslg.cli.command_parser("doc", cslg.cli.eval, engine="easyocr", bootstrap=10)
    assert parser.parse_args(["--run", "x"]).engine == "easyocr"
    assert parser.parse_args(["--run", "x", "--engine", "all"]).engine == "all"
    with pytest.raises(SystemExit):
        parser.parse_args(["--run", "x", "--engine", "tesseract"])
