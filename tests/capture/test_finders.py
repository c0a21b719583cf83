"""The causal finders against independent references on the tiny models: ``ablation`` against a plain
``StableDiffusion3Pipeline`` call (the negative prompt's trajectory, grabbed with ``callback_on_step_end``) and
``transformer(..., skip_layers=[l])`` evaluated on it pass by pass; ``patching`` against the diffusers transformer's
own forward with plain torch forward hooks that replace a block's image-token output; the lane cap; the settings a
causal finder refuses."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cslg.analysis import causal_change
from cslg.capture import CaptureConfig, probe_pair
from cslg.families import adapter_for
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.prompts import PromptPair

from ..helpers import H, MSL, W, tiny

PAIR = PromptPair("a coffee mug on a desk", "a coffee mug on a desk that says 'HELLO'")
STEPS = 3


def _config(name: str, finder: str, guidance: float) -> CaptureConfig:
    return CaptureConfig(name, "-", 1, STEPS, 0, H, W, guidance, MSL, trajectory="shared", finder=finder)


def _measures(n: torch.Tensor, others: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = n.double().flatten()
    distance = torch.stack([(x.double().flatten() - n).norm() for x in others])
    cosine = torch.stack([F.cosine_similarity(x.double().flatten(), n, dim=0) for x in others])
    return distance, cosine


def test_ablation_equals_sd3_pipeline_with_skip_layers():
    pipe = tiny("tiny-sd3")
    guidance = 5.0
    out = probe_pair(adapter_for(pipe), PAIR, _config("tiny-sd3", "ablation", guidance))

    generator = torch.Generator("cpu").manual_seed(0)
    noise = pipe.prepare_latents(1, pipe.transformer.config.in_channels, H, W, torch.float32, "cpu", generator)
    trajectory = [noise]
    pipe(prompt=PAIR.negative, guidance_scale=guidance, num_inference_steps=STEPS, height=H, width=W,
         latents=noise.clone(), max_sequence_length=MSL, output_type="latent",
         callback_on_step_end=lambda p, i, t, kw: trajectory.append(kw["latents"].clone()) or {},
         callback_on_step_end_tensor_inputs=["latents"])
    timesteps = pipe.scheduler.timesteps
    encoded = {}
    for name, prompt in (("n", PAIR.negative), ("p", PAIR.positive)):
        embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False,
                                                  max_sequence_length=MSL)
        encoded[name] = (embeds, pooled)
    layers = range(len(pipe.transformer.transformer_blocks))
    with torch.no_grad():
        def predict(latents, t, name, skip=None):
            embeds, pooled = encoded[name]
            return pipe.transformer(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=embeds,
                                    pooled_projections=pooled, skip_layers=skip, return_dict=False)[0]

        for step in range(STEPS):
            latents, t = trajectory[step], timesteps[step]
            n, p = predict(latents, t, "n"), predict(latents, t, "p")
            distance, cosine = _measures(n, [p] + [predict(latents, t, "p", [l]) for l in layers])
            torch.testing.assert_close(out["reference_distance"][step].double(), distance[0], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(out["reference_cosine"][step].double(), cosine[0], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(out["distance"][step].double(), distance[1:], atol=1e-4, rtol=1e-5)
            torch.testing.assert_close(out["cosine"][step].double(), cosine[1:], atol=1e-4, rtol=1e-5)
            ratio = causal_change(out["distance"][step][None], out["reference_distance"][step][None], "distance-ratio")
            torch.testing.assert_close(ratio[0], distance[1:] / (distance[0] + 1e-8), atol=1e-4, rtol=1e-4)
    assert float((out["distance"] - out["reference_distance"][..., None]).abs().max()) > 1e-3  # blocks matter


def _flux_call(pipe, adapter, latents, t, prompt):
    embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, max_sequence_length=MSL)
    _, extras = adapter.initial_noise(0, H, W)
    guidance = torch.full([1], adapter.guidance) if pipe.transformer.config.guidance_embeds else None
    return pipe.transformer(hidden_states=latents, timestep=t.expand(1) / 1000, guidance=guidance,
                            pooled_projections=pooled, encoder_hidden_states=embeds, txt_ids=text_ids,
                            img_ids=extras["img_ids"], return_dict=False)[0]


def _sd3_call(pipe, adapter, latents, t, prompt):
    embeds, _, pooled, _ = pipe.encode_prompt(prompt, None, None, do_classifier_free_guidance=False,
                                              max_sequence_length=MSL)
    return pipe.transformer(hidden_states=latents, timestep=t.expand(1), encoder_hidden_states=embeds,
                            pooled_projections=pooled, return_dict=False)[0]


@pytest.mark.parametrize("name,call", [("tiny-sd3", _sd3_call), ("tiny-flux", _flux_call)])
def test_patching_equals_forward_hooks_that_replace_a_blocks_output(name, call):
    """Step 0 (the latents are the noise for both): the negative prompt's forward stores every block's image-token
    output (element 1 of what diffusers' joint, double- and single-stream blocks return); the positive prompt's
    forward with a hook on block l that returns that output instead."""
    pipe = tiny(name)
    adapter = adapter_for(pipe, 3.5)
    out = probe_pair(adapter, PAIR, _config(name, "patching", 5.0))
    latents, _ = adapter.initial_noise(0, H, W)
    t = adapter.timesteps(STEPS, latents)[0]
    blocks = [block for _, block, _ in adapter.blocks]
    stored = {}
    with torch.no_grad():
        handles = [b.register_forward_hook(lambda m, a, o, i=i: stored.__setitem__(i, o[1]))
                   for i, b in enumerate(blocks)]
        try:
            n = call(pipe, adapter, latents, t, PAIR.negative)
        finally:
            for h in handles:
                h.remove()
        patched = []
        for i, block in enumerate(blocks):
            handle = block.register_forward_hook(lambda m, a, o, i=i: (o[0], stored[i]))
            try:
                patched.append(call(pipe, adapter, latents, t, PAIR.positive))
            finally:
                handle.remove()
        p = call(pipe, adapter, latents, t, PAIR.positive)
    distance, cosine = _measures(n, [p] + patched)
    torch.testing.assert_close(out["reference_distance"][0].double(), distance[0], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["distance"][0].double(), distance[1:], atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(out["cosine"][0].double(), cosine[1:], atol=1e-4, rtol=1e-5)
    assert float((distance[1:] - distance[0]).abs().max()) > 1e-3  # patching changes the prediction: the test can fail


@pytest.mark.parametrize("max_lanes", [2, 3, 5])
def test_lane_cap_gives_the_same_predictions(max_lanes):
    """Passes split over several forwards (each with the sources it patches from) predict what one forward does."""
    adapter = adapter_for(tiny("tiny-flux"), 3.5)
    cond = adapter.encode([PAIR.negative, PAIR.positive], MSL)
    latents, extras = adapter.initial_noise(0, H, W)
    t = adapter.timesteps(STEPS, latents)[0]
    passes = {"a": Pass("a"), "b": Pass("b")} | {f"s{l}": Pass.of("b", skip=[l]) for l in ("0", "3", "s2")} | \
        {f"p{l}": Pass.of("b", patch_from={l: "a"}) for l in ("1", "s4")}
    one = Executor(adapter).predict(latents, t, cond, ["a", "b"], passes, extras)
    capped = Executor(adapter, max_lanes).predict(latents, t, cond, ["a", "b"], passes, extras)
    assert list(capped) == list(passes)
    for name in passes:
        torch.testing.assert_close(capped[name], one[name], atol=1e-5, rtol=1e-5)


def test_patch_errors():
    adapter = adapter_for(tiny("tiny-flux"), 3.5)
    cond = adapter.encode([PAIR.negative], MSL)
    latents, extras = adapter.initial_noise(0, H, W)
    t = adapter.timesteps(STEPS, latents)[0]
    with pytest.raises(ValueError, match="^pass 'x' takes block 1's output from 'nope', which is not a pass"):
        Executor(adapter).predict(latents, t, cond, ["a"], {"x": Pass.of("a", patch_from={"1": "nope"})}, extras)
    with pytest.raises(ValueError, match="which perturbs that block itself"):
        Executor(adapter).predict(latents, t, cond, ["a"], {"y": Pass.of("a", skip=["1"]),
                                                            "x": Pass.of("a", patch_from={"1": "y"})}, extras)
    with pytest.raises(ValueError, match="^max_lanes: expected an integer of at least 2"):
        Executor(adapter, 1)
    with pytest.raises(ValueError, match=r"^layers \['1'\] are perturbed twice"):
        Pass.of("a", skip=["1"], patch_from={"1": "b"})


@pytest.mark.parametrize("setting,message", [
    (dict(trajectory="independent"), "^--trajectory independent: the ablation finder"),
    (dict(site="attn"), "^--site attn: the ablation finder"),
    (dict(compare="all"), "^--compare all: the ablation finder"),
    (dict(save_layers=("1",)), "^--save-activations: the ablation finder records predictions"),
    (dict(finder="nope"), "^--finder must be one of contrast, ablation, patching"),
])
def test_causal_finders_refuse_contrast_settings(setting, message):
    config = CaptureConfig(**{**_config("tiny-flux", "ablation", 3.5).__dict__, **setting})
    with pytest.raises(ValueError, match=message):
        probe_pair(adapter_for(tiny("tiny-flux"), 3.5), PAIR, config)


SMALL = dict(steps=2, height=32, width=32, max_sequence_length=32)


@pytest.mark.parametrize("finder,score", [("ablation", "distance-ratio"), ("patching", "distance-ratio-drop")])
def test_find_layers_with_a_causal_finder(finder, score):
    import cslg

    pipe = tiny("tiny-sd3")
    result = cslg.find_layers(pipe, [(PAIR.negative, PAIR.positive)], finder=finder, top_k=2, max_lanes=3, **SMALL)
    assert result["finder"] == finder and result["score"] == score and result["trajectory"] == "shared"
    names = cslg.layer_names(pipe)
    assert sorted(row["layer"] for row in result["ranking"]) == sorted(names)
    assert result["suggested"] == [row["layer"] for row in result["ranking"][:2]]
    by_cosine = cslg.find_layers(pipe, [(PAIR.negative, PAIR.positive)], finder=finder, score="cosine", **SMALL)
    scores = [row["score"] for row in by_cosine["ranking"]]
    assert by_cosine["score"] == "cosine" and scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(finder="probe"), ValueError, "^finder: expected one of contrast, ablation, patching, got 'probe'"),
    (dict(finder="ablation", score="ratio"), ValueError, "^score: expected one of distance-ratio,"),
    (dict(score="distance"), ValueError, "^score: ranks ablation and patching captures"),
    (dict(finder="ablation", max_lanes=1), ValueError, "^max_lanes: 1 is not an integer at least 2"),
    (dict(finder="patching", max_lanes=2.5), TypeError, "^max_lanes: expected an integer"),
    (dict(finder="ablation", trajectory="independent"), ValueError, "^trajectory: the ablation finder follows"),
])
def test_find_layers_checks_the_finder_arguments(kwargs, error, message):
    import cslg

    with pytest.raises(error, match=message):
        cslg.find_layers(tiny("tiny-sd3"), [("a", "b")], **kwargs)


def test_scripts_and_commands_take_the_finder(tmp_path, capsys):
    import json

    import FLUX_LayerExperiment_pairwise as flux_script
    import SD3_LayerExperiment_pairwise as sd3_script
    from cslg.capture import read_metadata
    from cslg.cli import main as cslg_main

    prompts = tmp_path / "pairs.json"
    prompts.write_text(json.dumps([{"negative": PAIR.negative, "positive": PAIR.positive}]))
    common = ["--prompts", str(prompts), "--pairs", "1", "--steps", "2", "--height", "32", "--width", "32",
              "--max-sequence-length", "32"]
    flux = flux_script.main(["--model", "tiny-flux", *common, "--finder", "ablation", "--out",
                             str(tmp_path / "f.safetensors")])
    sd3 = sd3_script.main(["--model", "tiny-sd3", *common, "--finder", "patching", "--max-lanes", "3", "--out",
                           str(tmp_path / "s.safetensors")])
    assert read_metadata(flux)["finder"] == "ablation" and read_metadata(flux)["trajectory"] == "shared"
    assert read_metadata(sd3)["finder"] == "patching"
    assert cslg_main(["analyse", str(sd3), "--out", str(tmp_path / "ana"), "--dpi", "30"]) == 0
    data = json.loads((tmp_path / "ana" / "layers.json").read_text())
    assert data["finder"] == "patching" and data["score"] == "distance-ratio-drop" and len(data["ranking"]) == 6
    assert cslg_main(["inspect", str(flux)]) == 0
    out = capsys.readouterr().out
    assert "captured (ablation) 1 pairs x 2 steps x 12 layers" in out
    assert "reference_distance" in out and "top layers (ablation finder, distance-ratio, mean over steps)" in out


@pytest.mark.parametrize("flags,message", [
    (["--finder", "ablation", "--trajectory", "independent"], "^--trajectory independent: the ablation finder"),
    (["--finder", "patching", "--site", "attn"], "^--site attn: the patching finder"),
    (["--finder", "ablation", "--save-activations", "1"], "^--save-activations: the ablation finder"),
    (["--finder", "ablation", "--preset", "paper"], "^--preset paper: upstream's contrastive capture"),
    (["--finder", "ablation", "--max-lanes", "1"], "^--max-lanes must be at least 2, got 1"),
])
def test_capture_command_refuses_contrast_settings_for_causal_finders(tmp_path, flags, message):
    from cslg.cli import main as cslg_main

    with pytest.raises(SystemExit, match=message):
        cslg_main(["capture", "--model", "tiny-sd3", "--prompts", str(tmp_path / "never-read.json"), *flags,
                   "--out", str(tmp_path / "x.safetensors")])
