"""Final-experiment grids (step 3): enumeration, sharding, resume, manifest, errors, scripts end to end."""

from __future__ import annotations

import json

import pytest
from PIL import Image

import FLUX_final_experiments as flux_script
import SD3_final_experiments as sd3_script
from cslg.families import adapter_for
from cslg.cli.grid import cells_of
from cslg.grid.contact_sheet import GAP
from cslg.grid import ImageSettings, enumerate_groups, method_tag, parse_shard, run_grid, shard_groups
from cslg.methods import CFG, CSLG, SCFG, ConceptDiffusion, NoGuidance, layer_combinations
from cslg.io import read_jsonl
from cslg.prompts import GenerationPrompt

PROMPTS = [GenerationPrompt("a sign that says 'OPEN'", ("OPEN",)), GenerationPrompt("a red book and a gold clock")]
TINY = ["--steps", "3", "--height", "32", "--width", "32", "--max-sequence-length", "64"]


BASE = ["--methods", "none", "cfg", "cslg", "--cfg-scales", "5,7", "--cslg-scales", "1,2", "--layers", "1", "3",
        "--layer-combinations", "all"]


def _cells(*flags):
    """The grid cells of BASE with ``flags`` appended (later flags win, as on a command line)."""
    return cells_of([*BASE, *flags])


def test_layer_combinations_and_grid_size():
    assert layer_combinations(["9", "12"], "all") == [("9",), ("12",), ("9", "12")]
    assert layer_combinations(["9", "12"], "given") == [("9", "12")]
    with pytest.raises(ValueError, match="--layer-combinations"):
        layer_combinations(["9"], "some")
    methods = _cells()
    assert len(methods) == 1 + 2 + 3 * 2 * 2
    assert methods[:3] == [NoGuidance(), CFG(5.0), CFG(7.0)]
    assert methods[3] == CSLG(("1",), 1.0, 5.0) and methods[-1] == CSLG(("1", "3"), 2.0, 7.0)
    baselines = _cells("--methods", "scfg", "concept", "--concept-scales", "5,7.5", "--scfg-layers", "2")
    assert [m.name for m in baselines] == ["scfg", "scfg", "concept", "concept", "concept", "concept"]
    assert baselines[0].layers == ("2",) and {m.concept_scale for m in baselines[2:]} == {5.0, 7.5}
    assert all(isinstance(m, SCFG) for m in baselines[:2]) and all(isinstance(m, ConceptDiffusion) for m in baselines[2:])
    assert {(m.cfg_scale, m.concept_scale) for m in baselines[2:]} == {(5.0, 5.0), (5.0, 7.5), (7.0, 5.0), (7.0, 7.5)}
    assert len({method_tag(m) for m in methods}) == len(methods)
    groups = enumerate_groups(PROMPTS, [0, 42, 7], methods)
    assert len(groups) == 6 and all(len(g) == len(methods) for g in groups)
    assert len({job.image for g in groups for job in g}) == 6 * len(methods)
    assert all("'" not in job.image and " " not in job.image for g in groups for job in g)


@pytest.mark.parametrize("count", [1, 2, 4, 7])
def test_shards_are_disjoint_and_complete(count):
    groups = enumerate_groups(PROMPTS, [0, 1, 2], _cells())
    parts = [shard_groups(groups, i, count) for i in range(count)]
    images = [job.image for part in parts for g in part for job in g]
    assert len(images) == len(set(images)) == sum(len(g) for g in groups)


def test_shard_from_flag_and_environment():
    assert parse_shard("1/4", {}) == (1, 4)
    assert parse_shard(None, {"WORLD_SIZE": "8", "RANK": "3", "LOCAL_RANK": "3"}) == (3, 8)
    assert parse_shard(None, {"SLURM_ARRAY_TASK_ID": "12", "SLURM_ARRAY_TASK_MIN": "10", "SLURM_ARRAY_TASK_COUNT": "4"}) == (2, 4)
    assert parse_shard(None, {"WORLD_SIZE": "1"}) == (0, 1)
    with pytest.raises(ValueError, match="i/n"):
        parse_shard("2of4", {})
    with pytest.raises(ValueError, match="out of range"):
        parse_shard("4/4", {})


def test_method_errors():
    with pytest.raises(SystemExit, match="unknown method 'ddim'"):
        _cells("--methods", "ddim")
    with pytest.raises(SystemExit, match="--cfg-scales: nan is not a finite number at least 0"):
        _cells("--cfg-scales", "nan")
    with pytest.raises(SystemExit, match="--cslg-scales: -1.0 is not a finite number at least 0"):
        _cells("--cslg-scales", "-1")
    with pytest.raises(SystemExit, match="cslg needs layers"):
        cells_of(["--methods", "cslg"])
    with pytest.raises(SystemExit, match="--layer-weights"):
        _cells("--layer-weights", "1,2")


def test_run_resume_after_interruption_and_shards_merge(sd3_pipe, tmp_path, monkeypatch):
    import cslg.grid.run as grid_mod

    d = adapter_for(sd3_pipe)
    methods = _cells("--cfg-scales", "5", "--cslg-scales", "2", "--layer-combinations", "given")
    groups = enumerate_groups(PROMPTS, [0, 1], methods)
    settings = ImageSettings(steps=3, height=32, width=32, max_sequence_length=64)
    calls = []
    real = grid_mod.sample_batch

    def flaky(*a, **kw):
        if len(calls) == 4:
            raise KeyboardInterrupt  # killed while the fifth image is in flight
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(grid_mod, "sample_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        run_grid(d, groups, settings, tmp_path, "tiny-sd3", shard=(0, 2), progress=False)
    assert len(list(tmp_path.rglob("images/**/*.png"))) == 4
    assert not list(tmp_path.rglob("*.tmp*"))
    calls.clear()
    monkeypatch.setattr(grid_mod, "sample_batch", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    run_grid(d, groups, settings, tmp_path, "tiny-sd3", shard=(0, 2), progress=False)
    assert len(calls) == 2  # 2 groups x 3 methods in shard 0, 4 already done
    run_grid(d, groups, settings, tmp_path, "tiny-sd3", shard=(1, 2), progress=False)
    records = [r for _, r in read_jsonl(tmp_path / "manifest.jsonl")]
    assert len(records) == len({r["image"] for r in records}) == 12
    for r in records:
        assert set(r) >= {"image", "prompt", "method", "seed", "params", "model"}
        assert (tmp_path / r["image"]).is_file()
        assert r["params"]["max_sequence_length"] == 64 and r["params"]["steps"] == 3
        assert ("expected_text" in r) == (r["prompt"] == PROMPTS[0].prompt)
    cslg = next(r for r in records if r["method"] == "cslg")
    assert cslg["params"]["layers"] == ["1", "3"] and cslg["params"]["scale"] == 2.0
    sheets = sorted((tmp_path / "contact_sheets").glob("*.png"))
    assert len(sheets) == 4 and Image.open(sheets[0]).width == 3 * (256 + GAP) + GAP
    with pytest.raises(ValueError, match="other settings .*steps 3 -> 4"):
        run_grid(d, groups, ImageSettings(steps=4, height=32, width=32, max_sequence_length=64), tmp_path, "tiny-sd3")


def _prompt_file(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text(json.dumps([{"prompt": "a mug that says 'HI'", "expected_text": ["HI"]}, "a plain wall"]))
    return path


def test_scripts_end_to_end_with_layers_from(tmp_path):
    layers_json = tmp_path / "layers.json"
    layers_json.write_text(json.dumps({"ranking": [{"layer": "s2"}, {"layer": "1"}, {"layer": "0"}]}))
    manifest = flux_script.main(["--model", "tiny-flux", "--prompts", str(_prompt_file(tmp_path)), *TINY,
                                 "--seeds", "5", "--methods", "none", "cfg", "cslg", "--cfg-scales", "1,3",
                                 "--layers-from", str(layers_json), "--top-k", "2", "--out", str(tmp_path / "flux")])
    records = [r for _, r in read_jsonl(manifest)]
    assert len(records) == 2 * (1 + 2 + 2)
    assert {tuple(r["params"]["layers"]) for r in records if r["method"] == "cslg"} == {("s2", "1")}
    assert all(r["params"]["guidance"] == 3.5 and r["seed"] == 5 for r in records)
    manifest = sd3_script.main(["--model", "tiny-sd3", "--prompts", str(_prompt_file(tmp_path)), *TINY,
                                "--seeds", "0", "--limit", "1", "--layers", "2", "4", "--slg-layers", "3",
                                "--out", str(tmp_path / "sd3")])
    methods = sorted(r["method"] for _, r in read_jsonl(manifest))
    assert methods == ["cfg", "cslg", "cslg", "cslg", "none", "slg"]  # layer combinations 'all': [2], [4], [2, 4]


def test_script_errors(tmp_path):
    prompts = str(_prompt_file(tmp_path))
    base = ["--model", "tiny-sd3", "--prompts", prompts, *TINY, "--out", str(tmp_path / "run")]
    with pytest.raises(SystemExit, match="unknown method 'fancy'"):
        sd3_script.main([*base, "--methods", "fancy"])
    with pytest.raises(SystemExit, match="cslg: unknown layer '24': valid layers are 0-5"):
        sd3_script.main([*base, "--layers", "24", "--slg-layers", "3"])
    with pytest.raises(SystemExit, match="slg: unknown layer '7'"):
        sd3_script.main([*base, "--layers", "1"])  # diffusers' SLG layers 7,8,9 do not exist in the tiny model
    with pytest.raises(SystemExit, match="--cslg-scales"):
        sd3_script.main([*base, "--layers", "1", "--slg-layers", "2", "--cslg-scales", "-2"])
    with pytest.raises(SystemExit):
        sd3_script.main([*base, "--cfg-scales", "seven"])
    with pytest.raises(SystemExit, match="--layers-from: file not found"):
        sd3_script.main([*base, "--layers-from", str(tmp_path / "nope.json")])
    (tmp_path / "bad.json").write_text("{\"rank\": 1}")
    with pytest.raises(SystemExit, match="not a layers.json"):
        sd3_script.main([*base, "--layers-from", str(tmp_path / "bad.json")])
    with pytest.raises(SystemExit, match="scfg: unknown layer 's1'"):
        sd3_script.main([*base, "--methods", "scfg", "--scfg-layers", "2", "s1"])
    with pytest.raises(SystemExit, match="--concept-scales"):
        sd3_script.main([*base, "--methods", "concept", "--concept-scales", "inf"])
    with pytest.raises(SystemExit, match="--shard"):
        sd3_script.main([*base, "--layers", "1", "--shard", "x"])


def test_degenerate_cells_warn_once_and_are_recorded(sd3_pipe, tmp_path, capsys):
    """An empty SLG window (0.01-0.2 of 4 steps) and CFG at w = 1 equal other methods: said once, in every row."""
    d = adapter_for(sd3_pipe)
    methods = _cells("--methods", "none", "cfg", "slg", "--cfg-scales", "1,5", "--slg-layers", "1")
    with pytest.warns(UserWarning, match="repeat the settings"):
        assert _cells("--methods", "cfg", "--cfg-scales", "5,5") == [CFG(5.0)]
    groups = enumerate_groups(PROMPTS, [0, 1], methods)
    run_grid(d, groups, ImageSettings(steps=4, height=32, width=32, max_sequence_length=64), tmp_path, "tiny-sd3",
             progress=False)
    out = capsys.readouterr().out
    assert out.count("holds no step of 4") == 1 and out.count("cfg scale 1: equals none") == 1
    records = [r for _, r in read_jsonl(tmp_path / "manifest.jsonl")]
    flagged = {(r["method"], r["params"]["cfg_scale"]) for r in records if r.get("warnings")}
    assert flagged == {("cfg", 1.0), ("slg", 5.0), ("slg", 1.0)}
    assert all(len(r["warnings"]) == 1 for r in records if r.get("warnings"))
    assert not [r for r in records if r["method"] == "none" and r.get("warnings")]
