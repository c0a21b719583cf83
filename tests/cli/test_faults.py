"""Fault injection: every bad input a user meets ends in one line naming the file, entry, flag or variable, before
anything is computed or written (README, "Reliability")."""

from __future__ import annotations

import json
import re

import pytest
import torch

import SD3_final_experiments as sd3_grid
import SD3_LayerExperiment_pairwise as sd3_capture
import visualize
from cslg.cli import main as cslg_main
from cslg.capture import save_capture
from cslg.evaluation import load_manifest
from cslg.io import append_jsonl
from cslg.prompts import PromptFileError, load_generation_prompts

SMALL = ["--model", "tiny-sd3", "--steps", "2", "--height", "32", "--width", "32", "--max-sequence-length", "32"]


def _prompts(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "a mug that says 'HI'", "expected_text": ["HI"]}]))
    return path


def _grid(tmp_path, *flags):
    sd3_grid.main([*SMALL, "--prompts", str(_prompts(tmp_path)), "--seeds", "0", "--methods", "none", "cfg",
                   "--out", str(tmp_path / "run"), *flags])


def _one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and "Traceback" not in message
    return message


@pytest.mark.parametrize("flags,message", [
    (["--guidance", "nan"], r"^--guidance: nan is not a finite number at least 0$"),
    (["--cfg-scales", "4,inf"], r"^--cfg-scales: inf is not a finite number"),
    (["--cfg-scales", "-1"], r"^--cfg-scales: -1.0 is not a finite number at least 0$"),
    (["--cslg-start", "-0.1"], r"^--cslg-start: -0.1 is not a finite number between 0 and 1$"),
    (["--slg-stop", "nan"], r"^--slg-stop: nan"),
    (["--apg-momentum", "nan"], r"^--apg-momentum: nan is not a finite number between -1 and 1$"),
    (["--seeds", "0,7,0"], r"^--seeds: seed 0 is given twice$"),
    (["--height", "34"], r"^--height 34: sd3 needs a multiple of 4$"),
    (["--max-sequence-length", "600"], r"^--max-sequence-length 600: sd3 takes 1 to 512 text tokens$"),
    (["--device", "cuda"], r"^error: --device cuda: no CUDA GPU is available here"),
])
def test_grid_flags(tmp_path, flags, message):
    if flags[0] == "--device" and torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(SystemExit) as excinfo:
        _grid(tmp_path, *flags)
    assert re.search(message, _one_line(excinfo)), _one_line(excinfo)
    assert not (tmp_path / "run" / "run.json").exists(), "a rejected run left settings that block the corrected rerun"


def test_layers_from_errors(tmp_path):
    folder = tmp_path / "analysis"
    folder.mkdir()
    with pytest.raises(SystemExit, match=r"^--layers-from: .*analysis is a folder; give its layers.json$"):
        _grid(tmp_path, "--methods", "cslg", "--layers-from", str(folder))
    bad = folder / "layers.json"
    bad.write_text(json.dumps({"family": "sd3", "model": "tiny-sd3", "ranking": [{"layer": 3}]}))
    with pytest.raises(SystemExit, match=r"ranking entry 1 has layer 3, expected a name"):
        _grid(tmp_path, "--methods", "cslg", "--layers-from", str(bad))
    bad.write_text(json.dumps({"family": "flux", "model": "tiny-flux", "ranking": [{"layer": "s1"}, {"layer": "s2"}]}))
    with pytest.raises(SystemExit, match=r"ranks the layers of a flux model \(tiny-flux\), but --model tiny-sd3 is a sd3"):
        _grid(tmp_path, "--methods", "cslg", "--layers-from", str(bad))


def test_out_and_environment_errors(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit, match=r"^error: --out .*file/run: .*file is a file, not a folder$"):
        sd3_grid.main([*SMALL, "--prompts", str(_prompts(tmp_path)), "--methods", "none", "--out",
                       str(tmp_path / "file" / "run")])
    monkeypatch.setenv("WORLD_SIZE", "abc")
    with pytest.raises(SystemExit, match=r"^environment variable WORLD_SIZE='abc' is not an integer$"):
        _grid(tmp_path)
    monkeypatch.delenv("WORLD_SIZE")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"model": "tiny-sd3", "ste')
    with pytest.raises(SystemExit, match=r"^error: .*run.json is corrupt"):
        _grid(tmp_path)


def test_capture_flags(tmp_path):
    pairs = tmp_path / "pairs.json"
    pairs.write_text(json.dumps([{"no_text": "a mug", "with_text": "a mug that says 'HI'"}]))
    common = [*SMALL, "--prompts", str(pairs), "--pairs", "1"]
    with pytest.raises(SystemExit, match=r"^--guidance: nan is not a finite number at least 0$"):
        sd3_capture.main([*common, "--guidance", "nan", "--out", str(tmp_path / "c.safetensors")])
    with pytest.raises(SystemExit, match=r"^--guidance: -1.0 is not a finite number at least 0$"):
        sd3_capture.main([*common, "--guidance", "-1", "--out", str(tmp_path / "c.safetensors")])
    with pytest.raises(SystemExit, match=r"^--height 30: sd3 needs a multiple of 4$"):
        sd3_capture.main([*common, "--height", "30", "--out", str(tmp_path / "c.safetensors")])


def _corrupt(tmp_path, kind):
    path = tmp_path / f"{kind}.safetensors"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "zeroed":
        path.write_bytes(b"\0" * 64)
    elif kind == "nan":
        save_capture(path, {"cosine": torch.full((1, 2, 3), float("nan"))}, {"layer_names": ["0", "1", "2"]})
    elif kind == "no_layer_names":
        save_capture(path, {"cosine": torch.ones(1, 2, 3)}, {})
    elif kind == "not_a_capture":
        from safetensors.torch import save_file

        save_file({"x": torch.ones(2)}, str(path))
    elif kind == "truncated":
        save_capture(path, {"cosine": torch.ones(1, 2, 3)}, {"layer_names": ["0", "1", "2"]})
        path.write_bytes(path.read_bytes()[:-10])
    return path


@pytest.mark.parametrize("kind,message", [
    ("missing", "capture file not found"), ("empty", "not a readable safetensors file"),
    ("zeroed", "not a readable safetensors file"), ("nan", "holds NaN or infinite values"),
    ("no_layer_names", "'layer_names' must list the 3 layers"), ("not_a_capture", "not a CSLG capture file"),
    ("truncated", "not a readable safetensors file"),
])
def test_bad_capture_files(tmp_path, kind, message):
    path = _corrupt(tmp_path, kind) if kind != "missing" else tmp_path / "missing.safetensors"
    for run in (lambda: visualize.main([str(path), "--out", str(tmp_path / "out")]), lambda: cslg_main(["inspect", str(path)])):
        with pytest.raises(SystemExit) as excinfo:
            run()
        assert message in _one_line(excinfo) and path.name in _one_line(excinfo)


def test_visualize_step_out_of_range(tmp_path):
    path = tmp_path / "c.safetensors"
    save_capture(path, {"cosine": torch.ones(1, 2, 3), "input_cosine": torch.ones(1, 2)},
                 {"layer_names": ["0", "1", "2"], "family": "sd3", "model": "m", "steps": 2})
    with pytest.raises(SystemExit, match=r"^error: --step 5 is out of range: the capture has 2 steps$"):
        visualize.main([str(path), "--step", "5", "--out", str(tmp_path / "out")])


def test_duplicate_prompts_name_both_entries(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps(["a wall", {"prompt": "a mug"}, {"prompt": "a wall", "expected_text": ["X"]}]))
    with pytest.raises(PromptFileError, match=r"p.json: entries 0 and 2 have the same prompt"):
        load_generation_prompts(path)


def test_interrupted_run_is_scored_from_its_shards(tmp_path, capsys):
    for i in range(2):
        append_jsonl(tmp_path / "manifests" / f"shard-00{i}-of-002.jsonl",
                     {"image": f"images/{i}.png", "prompt": "p", "method": "none"})
    assert [r["image"] for r in load_manifest(tmp_path)] == ["images/0.png", "images/1.png"]
    assert "manifest.jsonl is missing; scoring the rows of 2 shard manifest(s)" in capsys.readouterr().out


def test_unreachable_model_is_one_line(monkeypatch):
    from cslg.models import load_pipeline

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ValueError) as excinfo:
        load_pipeline("nosuch-org/no-such-model", device="cpu")
    message = _one_line(excinfo)
    assert message.startswith("--model nosuch-org/no-such-model is not in the local cache") and "tiny-sd3" in message


def test_run_json_with_nan_settings_is_named(tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "run.json").write_text('{"model": "tiny-sd3", "steps": NaN}')
    with pytest.raises(SystemExit, match=r"^error: .*run.json is corrupt \(it stores a non-finite number\)"):
        _grid(tmp_path)


def test_crashed_final_capture_write_is_removed(tmp_path):
    from cslg.io import remove_stale_temps

    leftover = tmp_path / ".c.safetensors.999996.x.tmp.safetensors"
    other = tmp_path / ".d.safetensors.999996.x.tmp.safetensors"
    leftover.write_bytes(b"x")
    other.write_bytes(b"x")
    assert remove_stale_temps(tmp_path, "c.safetensors") == 1 and not leftover.exists() and other.exists()


@pytest.mark.parametrize("edit,message", [
    ({"image": "../outside.png"}, "image '../outside.png' is not a path inside the run folder"),
    ({"image": "/etc/hostname"}, "image '/etc/hostname' is not a path inside the run folder"),
    ({"image": "C:\\\\x.png"}, "is not a path inside the run folder"),
    ({"seed": "0"}, "'seed' must be an integer or null, not '0'"),
    ({"params": {"cfg_scale": float("nan")}}, "param 'cfg_scale' is not a finite number"),
])
def test_manifest_rows_are_validated_before_anything_is_read(tmp_path, edit, message):
    (tmp_path / "outside.png").write_bytes(b"not read")
    run = tmp_path / "run"
    row = {"image": "images/0.png", "prompt": "a mug that says 'HI'", "method": "none", "seed": 0, "params": {}}
    append_jsonl(run / "manifest.jsonl", {**row, **edit})
    with pytest.raises(SystemExit) as excinfo:
        cslg_main(["eval", "--run", str(run)])
    assert message in _one_line(excinfo) and "manifest.jsonl: line 1" in _one_line(excinfo)


def test_the_same_capture_twice_is_refused(tmp_path):
    path = tmp_path / "c.safetensors"
    save_capture(path, {"cosine": torch.rand(2, 2, 3), "input_cosine": torch.ones(2, 2)},
                 {"layer_names": ["0", "1", "2"], "family": "sd3", "model": "m", "steps": 2})
    copy = tmp_path / "copy.safetensors"
    copy.write_bytes(path.read_bytes())
    for inputs in ([path, path], [path, copy]):
        with pytest.raises(SystemExit) as excinfo:
            cslg_main(["analyse", *map(str, inputs), "--out", str(tmp_path / "out")])
        assert "the same capture as" in _one_line(excinfo) and "pairs would count twice" in _one_line(excinfo)


def test_a_second_capture_of_the_same_out_is_refused_while_one_runs(tmp_path):
    from cslg.io import file_lock

    out = tmp_path / "cap.safetensors"
    with file_lock(tmp_path / "cap.safetensors.lock"):
        with pytest.raises(SystemExit) as excinfo:
            sd3_capture.main([*SMALL, "--pairs", "1", "--out", str(out)])
    assert "locked by another capture writing" in _one_line(excinfo) and not out.exists()


def test_a_per_image_row_cut_by_a_crash_is_read_again(tmp_path):
    from cslg.evaluation.scoring import _cached_ocr_texts

    header = "image,engine,ocr_text,ocr_similarity,error\n"
    (tmp_path / "per_image.csv").write_text(header + "a.png,easyocr,HELLO,1.0,\nb.png,easyocr,HEL")
    assert _cached_ocr_texts(tmp_path / "per_image.csv", "easyocr") == {"a.png": "HELLO"}


@pytest.mark.parametrize("meta,tensors,message", [
    ({"steps": 5}, {}, "metadata 'steps' is 5 but 'cosine' holds 2"),
    ({"pairs": 3}, {}, "metadata 'pairs' is 3 but 'cosine' holds 1"),
    ({"family": "sd9"}, {}, "metadata 'family' 'sd9' is not one of"),
    ({"layer_names": ["0", "0", "2"]}, {}, "metadata 'layer_names' lists a layer twice"),
    ({}, {"input_cosine": torch.tensor([[1.0, float("nan")]])}, "'input_cosine' must be finite with shape [1, 2]"),
    ({}, {"input_cosine": torch.ones(2, 2)}, "'input_cosine' must be finite with shape [1, 2] (has (2, 2))"),
])
def test_hand_edited_capture_metadata_is_named(tmp_path, meta, tensors, message):
    path = tmp_path / "c.safetensors"
    save_capture(path, {"cosine": torch.ones(1, 2, 3), "input_cosine": torch.ones(1, 2), **tensors},
                 {"layer_names": ["0", "1", "2"], "family": "sd3", "model": "m", "steps": 2, **meta})
    with pytest.raises(SystemExit) as excinfo:
        visualize.main([str(path), "--out", str(tmp_path / "out")])
    assert message in _one_line(excinfo) and "c.safetensors" in _one_line(excinfo)


def test_images_of_any_mode_are_read_and_one_an_engine_fails_on_is_an_error_row(tmp_path):
    import csv

    import numpy as np
    from PIL import Image, ImageDraw

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    text = Image.new("RGBA", (200, 60), (0, 0, 0, 0))  # the text only in the alpha channel
    ImageDraw.Draw(text).text((10, 20), "HELLO", fill=(0, 0, 0, 255))
    grey = Image.new("L", (200, 60), 255)
    ImageDraw.Draw(grey).text((10, 20), "HELLO", fill=0)
    images = {"alpha.png": text, "grey16.png": Image.fromarray(np.asarray(grey).astype("uint16") * 257),
              "la.png": grey.convert("LA"), "strip.png": Image.new("RGB", (4000, 1), "white")}
    for name, image in images.items():
        image.save(run / "images" / name)
        append_jsonl(run / "manifest.jsonl", {"image": f"images/{name}", "prompt": "a sign that says 'HELLO'",
                                              "method": name.split(".")[0]})
    assert cslg_main(["eval", "--run", str(run), "--engine", "easyocr"]) == 0
    rows = {r["image"]: r for r in csv.DictReader(open(run / "eval" / "per_image.csv", encoding="utf-8"))}
    for name in ("alpha.png", "grey16.png", "la.png"):
        assert rows[f"images/{name}"]["ocr_text"] == "HELLO" and not rows[f"images/{name}"]["error"], name
    assert rows["images/strip.png"]["error"].startswith("easyocr failed on ")


def test_runs_that_would_be_silently_reinterpreted_are_refused(tmp_path):
    ranking = tmp_path / "layers.json"
    ranking.write_text(json.dumps({"family": "sd3", "ranking": [{"layer": "1", "score": 0.1}], "suggested": ["1"]}))
    cases = [
        (lambda: _grid(tmp_path, "--methods", "cslg", "--layers-from", str(ranking), "--top-k", "3"),
         "--top-k 3: " + str(ranking) + " ranks only 1 layer(s)"),
        (lambda: sd3_grid.main([*SMALL, "--seeds", "0", "--out", ""]), "--out: give a run folder"),
        (lambda: sd3_capture.main([*SMALL, "--pairs", "1", "--save-steps", "5", "--out", str(tmp_path / "c")]),
         "--save-steps: only used with --save-activations"),
    ]
    for run, message in cases:
        with pytest.raises(SystemExit) as excinfo:
            run()
        assert message in _one_line(excinfo)
    for argv in (["inspect", str(ranking), "--top-k", "-2"], ["analyse", str(ranking), "--ylim", "nan"]):
        with pytest.raises(SystemExit) as excinfo:
            cslg_main(argv)
        assert excinfo.value.code == 2
