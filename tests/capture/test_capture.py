"""Activation capture (step 1): shapes, names, the cosine against a direct computation, files, errors."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import cslg.capture.run as capture_mod
import FLUX_LayerExperiment_pairwise as flux_script
import SD3_LayerExperiment_pairwise as sd3_script
from cslg.cli import main as cslg_main
from cslg.capture import load_capture, read_metadata
from cslg.capture import CaptureConfig, PairTrajectory, capture_pair, resolve_steps, run_capture
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.methods import Step
from cslg.prompts import PromptPair

from ..helpers import H, MSL, STEPS, W, tiny

PAIRS = [
    PromptPair("a brown dog sitting on a sidewalk", "a brown dog sitting on a sidewalk, wearing a tag that says 'buddy'", "text"),
    PromptPair("a coffee mug on a desk", 'a coffee mug on a desk with "WORLD\'S BEST DAD" printed on it', "text"),
]


def _config(name, trajectory="independent", guidance=None, **kw):
    guidance = guidance if guidance is not None else (3.5 if name == "tiny-flux" else 5.0)
    return CaptureConfig(name, "pairs.json", len(PAIRS), STEPS, 3, H, W, guidance, MSL, trajectory, **kw)


def _direct_step0(adapter, pair, config):
    """Block outputs of the two prompts, each run alone at step 0 from the same noise (forward hooks on the
    blocks, reading the image stream in each block's own output order)."""
    outs = {}
    handles = [b.register_forward_hook(lambda m, a, o, i=i, bl=bl: outs.setdefault(i, []).append(adapter.image_output(bl, o)))
               for i, (_, b, bl) in enumerate(adapter.blocks)]
    noise, extras = adapter.initial_noise(config.seed, H, W)
    t = adapter.timesteps(STEPS, noise)[0]
    try:
        for prompt in (pair.negative, pair.positive):
            Executor(adapter).predict(noise, t, adapter.encode([prompt], MSL), ["p"], {"p": Pass("p")}, extras)
    finally:
        for h in handles:
            h.remove()
    assert all(len(outs[i]) == 2 for i in range(len(adapter.blocks)))
    return torch.stack([F.cosine_similarity(outs[i][0].flatten(), outs[i][1].flatten(), dim=0)
                        for i in range(len(adapter.blocks))])


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3", "tiny-sd35"])
@pytest.mark.parametrize("trajectory", ["independent", "shared"])
def test_cosine_equals_direct_computation_at_step0(name, trajectory):
    d = adapter_for(tiny(name), 3.5)
    config = _config(name, trajectory)
    out = capture_pair(d, PAIRS[0], config)
    assert out["cosine"].shape == (STEPS, len(d.blocks))
    assert torch.isfinite(out["cosine"]).all()
    direct = _direct_step0(d, PAIRS[0], config)
    assert torch.allclose(out["cosine"][0], direct, atol=1e-5)
    assert (direct < 1 - 1e-6).any(), "the two prompts gave identical activations: the test could not fail"


def test_pair_trajectory_passes_and_rows():
    pair = PAIRS[0]
    ind, shared = PairTrajectory("independent", 5.0), PairTrajectory("shared")
    assert ind.conditions(pair) == {"uncond": "", "a": pair.negative, "b": pair.positive}
    assert shared.conditions(pair) == {"a": pair.negative, "b": pair.positive}
    assert ind.passes(Step(0, 2)) == {"uncond_a": Pass("uncond", latent=0), "uncond_b": Pass("uncond", latent=1),
                                      "a": Pass("a", latent=0), "b": Pass("b", latent=1)}
    assert shared.passes(Step(0, 2)) == {"a": Pass("a"), "b": Pass("b")}
    assert PairTrajectory("independent", 1.0).cfg_scale is None  # CFG runs only above 1
    u, a, b = torch.zeros(1, 2), torch.ones(1, 2), torch.full((1, 2), 2.0)
    v = ind.combine({"uncond_a": u, "uncond_b": u, "a": a, "b": b}, Step(0, 2))
    assert torch.equal(v, torch.cat([5.0 * a, 5.0 * b]))
    assert torch.equal(shared.combine({"a": a, "b": b}, Step(0, 2)), a)  # the shared latent follows a
    with pytest.raises(ValueError, match="--trajectory"):
        PairTrajectory("sideways")


def test_trajectory_modes_differ_after_step0(sd3_pipe):
    d = adapter_for(sd3_pipe)
    ind = capture_pair(d, PAIRS[1], _config("tiny-sd3", "independent"))["cosine"]
    shared = capture_pair(d, PAIRS[1], _config("tiny-sd3", "shared"))["cosine"]
    assert torch.allclose(ind[0], shared[0], atol=1e-6)  # same noise at step 0
    assert not torch.allclose(ind[1:], shared[1:], atol=1e-6)


def test_file_round_trip_metadata_and_activations(flux_pipe, tmp_path):
    d = adapter_for(flux_pipe, 3.5)
    config = _config("tiny-flux", save_layers=("2", "s1"), save_steps=(0, STEPS - 1))
    path = run_capture(d, PAIRS, config, tmp_path / "cap.safetensors", progress=False)
    cap = load_capture(path)
    assert cap.cosine.shape == (2, STEPS, 12) and cap.cosine.dtype == torch.float32
    assert cap.layer_names == [str(i) for i in range(6)] + [f"s{i}" for i in range(6)]
    for key in ("model", "prompts_file", "pairs", "steps", "timesteps", "seed", "guidance", "max_sequence_length",
                "height", "width", "layer_names", "trajectory", "family", "block_groups"):
        assert key in cap.metadata, key
    assert cap.metadata["family"] == "flux"
    assert cap.metadata["block_groups"] == [["double-stream blocks", 0], ["single-stream blocks", 6]]
    assert len(cap.metadata["timesteps"]) == STEPS and cap.metadata["seed"] == 3
    tokens = (H // 2 // 2) * (W // 2 // 2)
    assert cap.activations["s1"].shape == (2, 2, 2, tokens, flux_pipe.transformer.inner_dim)
    assert cap.activation_steps.tolist() == [0, STEPS - 1]
    # Raw activations agree with the cosine they were reduced from.
    a, b = cap.activations["2"][1, 1]
    assert torch.allclose(F.cosine_similarity(a.flatten(), b.flatten(), dim=0), cap.cosine[1, STEPS - 1, 2], atol=1e-5)
    assert not (tmp_path / "cap.safetensors.partial").exists()


def test_resume_skips_finished_pairs(sd3_pipe, tmp_path, monkeypatch):
    d = adapter_for(sd3_pipe)
    config = _config("tiny-sd3")
    out = tmp_path / "cap.safetensors"
    import cslg.capture.run as capture_mod

    calls = []
    real = capture_mod.capture_pair

    def interrupted(adapter, pair, cfg):
        if calls:
            raise KeyboardInterrupt
        calls.append(pair)
        return real(adapter, pair, cfg)

    monkeypatch.setattr(capture_mod, "capture_pair", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_capture(d, PAIRS, config, out, progress=False)
    assert not out.exists() and len(list((tmp_path / "cap.safetensors.partial").glob("pair_*"))) == 1
    counted = []
    monkeypatch.setattr(capture_mod, "capture_pair", lambda *a: counted.append(1) or real(*a))
    run_capture(d, PAIRS, config, out, progress=False)
    assert counted == [1]  # only the unfinished pair was computed
    full = run_capture(d, PAIRS, config, tmp_path / "fresh.safetensors", progress=False)
    assert torch.equal(load_capture(out).cosine, load_capture(full).cosine)


def test_resume_refuses_other_settings(sd3_pipe, tmp_path):
    partial = tmp_path / "cap.safetensors.partial"
    partial.mkdir()
    stored = {**capture_mod.run_settings(_config("tiny-sd3"), PAIRS), "steps": 7, "pairs": 5}
    (partial / "config.json").write_text(json.dumps(stored))
    with pytest.raises(ValueError, match=r"other settings \(pairs 5 -> 2, steps 7 -> 4\)"):  # names what differs
        run_capture(adapter_for(sd3_pipe), PAIRS, _config("tiny-sd3"), tmp_path / "cap.safetensors", progress=False)
    (partial / "config.json").write_text("{trunc")
    with pytest.raises(ValueError, match=r"config.json is corrupt \(.*\); delete .*partial"):
        run_capture(adapter_for(sd3_pipe), PAIRS, _config("tiny-sd3"), tmp_path / "cap.safetensors", progress=False)
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(ValueError, match="is a directory"):
        run_capture(adapter_for(sd3_pipe), PAIRS, _config("tiny-sd3"), tmp_path / "dir.safetensors", progress=False)


def test_corrupt_part_is_captured_again_and_a_finished_capture_is_kept(sd3_pipe, tmp_path, capsys):
    adapter, out = adapter_for(sd3_pipe), tmp_path / "cap.safetensors"
    config = _config("tiny-sd3")
    first = load_capture(run_capture(adapter, PAIRS, config, out, progress=False)).cosine
    partial = tmp_path / "cap.safetensors.partial"
    partial.mkdir()
    (partial / "config.json").write_text(json.dumps(capture_mod.run_settings(config, PAIRS)))
    (partial / "pair_00000.safetensors").write_bytes(b"\x00" * 10)  # a truncated part
    out.unlink()
    again = load_capture(run_capture(adapter, PAIRS, config, out, progress=False)).cosine
    assert "pair_00000.safetensors is corrupt" in capsys.readouterr().out and torch.equal(first, again)
    mtime = out.stat().st_mtime_ns
    run_capture(adapter, PAIRS, config, out, progress=False)  # finished: kept, not recomputed
    assert out.stat().st_mtime_ns == mtime and "already holds this capture" in capsys.readouterr().out


def test_scripts_and_inspect(tmp_path, capsys, root):
    prompts = tmp_path / "pairs.json"
    prompts.write_text(json.dumps([{"no_text": p.negative, "with_text": p.positive} for p in PAIRS]))
    common = ["--prompts", str(prompts), "--pairs", "2", "--steps", "3", "--height", "32", "--width", "32",
              "--max-sequence-length", "64"]
    out = flux_script.main(["--model", "tiny-flux", *common, "--out", str(tmp_path / "f.safetensors"),
                            "--save-activations", "s0", "--save-steps", "0,-1"])
    meta = read_metadata(out)
    assert meta["family"] == "flux" and meta["save_steps"] == [0, 2] and meta["prompts_file"] == str(prompts)
    out = sd3_script.main(["--model", "tiny-sd35", *common, "--trajectory", "shared", "--out", str(tmp_path / "s.safetensors")])
    assert load_capture(out).cosine.shape == (2, 3, 6)
    assert cslg_main(["inspect", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "cosine" in printed and "(2, 3, 6)" in printed and "trajectory: shared" in printed


def test_bad_input_errors(tmp_path):
    base = ["--model", "tiny-sd3", "--steps", "2", "--height", "32", "--width", "32", "--out", str(tmp_path / "x.st")]
    with pytest.raises(SystemExit, match="--prompts: .*missing.json"):
        sd3_script.main([*base, "--prompts", str(tmp_path / "missing.json")])
    bad = tmp_path / "bad.json"
    bad.write_text("[{\"no_text\": \"a\"")
    with pytest.raises(SystemExit, match="--prompts: .*bad.json"):
        sd3_script.main([*base, "--prompts", str(bad)])
    good = tmp_path / "good.json"
    good.write_text(json.dumps([{"no_text": "a", "with_text": "a 'b'"}]))
    with pytest.raises(SystemExit, match="--model .*no model_index.json"):
        sd3_script.main([*base, "--prompts", str(good), "--pairs", "1", "--model", str(tmp_path)])
    with pytest.raises(SystemExit, match="--save-activations: unknown layer '9': valid layers are 0-5"):
        sd3_script.main([*base, "--prompts", str(good), "--pairs", "1", "--save-activations", "9"])
    with pytest.raises(SystemExit):
        sd3_script.main([*base, "--prompts", str(good), "--trajectory", "sideways"])
    with pytest.raises(SystemExit, match="--steps must be at least 1"):
        sd3_script.main([*base, "--prompts", str(good), "--pairs", "1", "--steps", "0"])
    with pytest.raises(ValueError, match="out of range"):
        resolve_steps([5], 3)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        (tmp_path / "junk.safetensors").write_bytes(b"junk")
        load_capture(tmp_path / "junk.safetensors")
    with pytest.raises(FileNotFoundError, match="capture file not found"):
        load_capture(tmp_path / "none.safetensors")
