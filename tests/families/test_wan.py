"""Wan (text-to-video) through the whole spine, against diffusers' own ``WanPipeline`` and its transformer forward:
frame by frame equal videos, skipped blocks as identities inside diffusers' forward, capture cosine, the other
methods, the video token layout."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import WanPipeline, WanTransformer3DModel
from transformers import UMT5EncoderModel

import cslg
from cslg.families import LatentLayout, adapter_for, build_tiny
from cslg.guidance.executor import Executor
from cslg.guidance.sampling import prepare, sample
from cslg.guidance.skip import skip_blocks
from cslg.methods import APG, CFG, CSLG, PAG, SCFG, CFGZeroStar, ConceptDiffusion, NoGuidance, Request, SkippedNegativeSLG, Step
from .checks import check_capture_cosine

from ..helpers import tiny

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 3
STEPS = 2
H = W = 32
FRAMES = 5  # 2 latent frames of 2x2 tokens
MSL = 32
TOL = 1 / 255


def _adapter(name="tiny-wan"):
    return adapter_for(tiny(name), frames=FRAMES)


def _pipeline(name, size, **kw):
    return tiny(name)(PROMPT, num_inference_steps=STEPS, height=size, width=size, num_frames=FRAMES,
                      max_sequence_length=MSL, output_type="np",
                      generator=torch.Generator("cpu").manual_seed(SEED), **kw).frames[0]


def _ours(method, prompt=PROMPT, name="tiny-wan", size=H):
    return sample(_adapter(name), method, Request(prompt, NEG), SEED, STEPS, size, size, MSL, output_type="np")


@pytest.mark.parametrize("name,size", [("tiny-wan", H), ("tiny-wan22", 64)])  # Wan 2.2's VAE: 16x spatial
def test_cfg_and_none_equal_the_pipeline_frame_by_frame(name, size):
    ref_cfg = _pipeline(name, size, negative_prompt=NEG, guidance_scale=4.0)
    ref_none = _pipeline(name, size, guidance_scale=1.0)
    ours_cfg, ours_none = _ours(CFG(4.0), name=name, size=size), _ours(NoGuidance(), name=name, size=size)
    assert ours_cfg.shape == ref_cfg.shape == (FRAMES, size, size, 3)
    for frame in range(FRAMES):
        assert np.abs(ref_cfg[frame] - ours_cfg[frame]).max() <= TOL, frame
        assert np.abs(ref_none[frame] - ours_none[frame]).max() <= TOL, frame
    assert np.abs(ref_cfg - ref_none).max() > 2 * TOL, "CFG changed nothing: the test could not fail"


def _diffusers_forward(pipe, run, t, row: int) -> torch.Tensor:
    """The prediction of row ``row`` from diffusers' own transformer forward, called as the pipeline calls it."""
    return pipe.transformer(hidden_states=run.latents.to(pipe.transformer.dtype), timestep=t.expand(1),
                            encoder_hidden_states=run.cond.embeds[row:row + 1], return_dict=False)[0]


@pytest.mark.parametrize("layers", [("1",), ("0", "3")])
def test_cslg_equals_identity_blocks_in_the_diffusers_forward(layers):
    """The skipped blocks become identities by forward hooks returning the block's input (not ``skip_blocks``)."""
    pipe = tiny("tiny-wan")
    adapter = _adapter()
    run = prepare(adapter, {"uncond": NEG, "cond": PROMPT}, SEED, STEPS, H, W, MSL)
    t = run.timesteps[1]
    method = CSLG(layers, 2.0, cfg_scale=4.0)
    step = Step(1, STEPS, layout=adapter.layout(run.latents, run.extras))
    preds = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras)
    ours = method.combine(preds, step)
    with torch.no_grad():
        u, c = (_diffusers_forward(pipe, run, t, row) for row in (0, 1))
        hooks = [pipe.transformer.blocks[int(i)].register_forward_hook(lambda m, args, out: args[0]) for i in layers]
        try:
            c_skip = _diffusers_forward(pipe, run, t, 1)
        finally:
            for hook in hooks:
                hook.remove()
        with skip_blocks(pipe, layers):  # and the toolkit's skip inside diffusers' forward is the same
            torch.testing.assert_close(_diffusers_forward(pipe, run, t, 1), c_skip, atol=0, rtol=0)
    torch.testing.assert_close(ours, u + 4.0 * (c - u) + 2.0 * (c - c_skip), atol=1e-5, rtol=1e-4)
    assert (c - c_skip).abs().max() > 1e-3, "skipping changed nothing: the test could not fail"


def test_capture_cosine_equals_separate_forwards_at_step_zero():
    check_capture_cosine(tiny("tiny-wan"), "tiny-wan", _diffusers_forward, adapter=_adapter())


def test_the_other_methods_run_and_guide():
    """PAG (identity self-attention over every frame's tokens), skipped-negative SLG, S-CFG (cross-attention maps
    per frame, on the stacked-frame token grid), ConceptDiffusion, APG and CFG-Zero* run on videos and change them."""
    cfg = _ours(CFG(4.0))
    methods = (PAG(["1"], 2.0, 4.0), SkippedNegativeSLG(["1"], 4.0), SCFG(4.0), ConceptDiffusion(4.0, 4.0),
               APG(4.0), CFGZeroStar(4.0))
    for method in methods:
        video = sample(_adapter(), method, Request("a red book and a gold clock", NEG), SEED, STEPS, H, W, MSL,
                       output_type="np")
        assert video.shape == cfg.shape and np.isfinite(video).all(), method.name
        assert np.abs(video - cfg).max() > TOL, f"{method.name} gave the CFG video"


def test_text_roles_of_the_padded_umt5_sequence():
    """The character-level tiny tokenizer reads "a b" as ``▁a ▁b </s>``; zero embeddings pad it to ``text_len``."""
    roles = _adapter().text_roles("a  b", 8)
    assert (roles.content, roles.background, roles.text_len) == ((0, 1), (3, 4, 5, 6, 7), 8)
    assert _adapter().text_roles("abcdefghij", 8).background == (7,)  # truncated: </s> is the background


def test_pag_without_layers_says_wan_has_no_default():
    with pytest.raises(ValueError, match="wan models have no default"):
        _ours(PAG(None, 2.0, 4.0))


def test_generate_takes_num_frames_and_checks_it():
    pipe = tiny("tiny-wan")
    run = dict(steps=1, height=H, width=W, max_sequence_length=MSL, progress=False)
    frames = cslg.generate(pipe, "a mug", cslg.CFG(4.0), num_frames=FRAMES, **run).images
    assert len(frames) == 1 and len(frames[0]) == FRAMES and frames[0][0].size == (W, H)
    with pytest.raises(ValueError, match="--frames 6: wan needs 4k\\+1 frames"):
        cslg.generate(pipe, "a mug", cslg.CFG(4.0), num_frames=6, **run)
    with pytest.raises(ValueError, match="num_frames: sd3 models make images"):
        cslg.generate(tiny("tiny-sd3"), "a mug", cslg.CFG(4.0), num_frames=5, **run)
    with pytest.raises(ValueError, match="A14B"):
        adapter_for(type("TwoExperts", (type(pipe),), {})(**{**pipe.components, "transformer_2": pipe.transformer}))


def test_video_layout_runs_frame_by_frame():
    """Tokens of ``[1, C, F, H, W]`` with 2x2 patches: the stacked grid's rows are frame after frame."""
    frames, c, h, w, p = 3, 4, 4, 6, 2
    x = torch.randn(1, c, frames, h, w)
    layout = LatentLayout(frames * h // p, w // p, patch=p, frames=frames)
    norms = layout.token_norms(x)[0]
    for f in range(frames):
        per_frame = x[0, :, f].reshape(c, h // p, p, w // p, p).square().sum(dim=(0, 2, 4)).sqrt()
        torch.testing.assert_close(norms[f * h // p:(f + 1) * h // p], per_frame)
    assert torch.equal(layout.from_pixels(layout.to_pixels(x)), x)
    rho = torch.arange(norms.numel(), dtype=torch.float32).reshape(1, *norms.shape)
    spread = layout.to_prediction(rho)
    assert spread.shape == (1, 1, frames, h, w)
    assert spread[0, 0, 1, 0, 0] == rho[0, h // p, 0] and spread[0, 0, 2, 3, 5] == rho[0, 2 * h // p + 1, 2]
    assert layout.per_channel(torch.arange(c, dtype=torch.float32)).expand_as(x)[0, 3, 2, 1, 1] == 3


@pytest.mark.parametrize("name", ["tiny-wan", "tiny-wan22"])
def test_presets_are_small_real_classes_and_round_trip(name, tmp_path):
    pipe = tiny(name)
    assert type(pipe) is WanPipeline and type(pipe.transformer) is WanTransformer3DModel
    assert type(pipe.text_encoder) is UMT5EncoderModel and len(pipe.transformer.blocks) == 6
    for key, module in pipe.components.items():
        if isinstance(module, torch.nn.Module):
            assert not module.training and sum(p.numel() for p in module.parameters()) < 1_000_000, key
    pipe.save_pretrained(tmp_path / name)
    loaded = WanPipeline.from_pretrained(str(tmp_path / name))
    loaded.set_progress_bar_config(disable=True)
    assert loaded.config.expand_timesteps == pipe.config.expand_timesteps
    assert loaded.tokenizer(PROMPT).input_ids == pipe.tokenizer(PROMPT).input_ids
    kw = dict(prompt=PROMPT, num_inference_steps=1, height=64, width=64, num_frames=FRAMES, max_sequence_length=MSL,
              output_type="np")
    ref = pipe(**kw, generator=torch.Generator("cpu").manual_seed(SEED)).frames
    out = loaded(**kw, generator=torch.Generator("cpu").manual_seed(SEED)).frames
    assert np.abs(ref - out).max() < 1e-5


def test_compiled_blocks_have_no_graph_break_and_give_the_same_video():
    import torch._dynamo

    pipe = build_tiny("tiny-wan")
    pipe.set_progress_bar_config(disable=True)
    run = dict(num_frames=FRAMES, steps=2, height=H, width=W, max_sequence_length=MSL, output_type="latent",
               progress=False)
    methods = (CFG(4.0), CSLG(["2"], 2.0, 4.0))
    plain = [cslg.generate(pipe, PROMPT, m, **run).images for m in methods]
    torch._dynamo.reset()
    assert cslg.compile_blocks(pipe, backend="eager", fullgraph=True) == 6  # fullgraph: a graph break raises
    torch._dynamo.utils.counters.clear()
    for method, ref in zip(methods, plain):
        assert torch.equal(cslg.generate(pipe, PROMPT, method, **run).images, ref), method.name
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert not torch._dynamo.utils.counters["graph_break"]
