"""What the tests of each family check the same way: CSLG against identity blocks inside diffusers' own transformer
forward, the capture cosine against separate forwards, the baselines run. A family's test module passes its
diffusers forward (``forward(pipe, run, t, row)``: the prediction of conditioning row ``row`` as the pipeline computes
it before guidance)."""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from cslg.capture import CaptureConfig, capture_pair
from cslg.families import IMAGE_ONLY, TEXT_IMAGE, adapter_for
from cslg.guidance.executor import Executor
from cslg.guidance.sampling import prepare, sample
from cslg.methods import APG, CFG, CSLG, SCFG, CFGZeroStar, ConceptDiffusion, Request, SkippedNegativeSLG, Step
from cslg.prompts import PromptPair

from ..helpers import H, MSL, W

PROMPT = "a neon sign that says 'OPEN' above a door"
NEG = "blurry, low quality"
SEED = 3
TOL = 1 / 255


@contextmanager
def identity_blocks(adapter, layers):
    """Forward hooks that make the blocks ``layers`` return their own inputs, in their own output order."""

    def hook(convention):
        def returned(module, args, kwargs, output):
            image = args[0] if args else kwargs.get("hidden_states", kwargs.get("x"))
            if convention.output == IMAGE_ONLY:
                return image
            text = args[1] if len(args) > 1 else kwargs["encoder_hidden_states"]
            return (text, image) if convention.output == TEXT_IMAGE else (image, text)
        return returned

    handles = [block.register_forward_hook(hook(bl), with_kwargs=True)
               for name, block, bl in adapter.blocks if name in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def check_cslg_equals_identity_blocks(pipe, forward, layers, steps, cfg_scale=4.0, scale=2.0, atol=1e-5, height=H,
                                      width=W):
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"uncond": NEG, "cond": PROMPT}, SEED, steps, height, width, MSL)
    t = run.timesteps[1]
    method = CSLG(layers, scale, cfg_scale=cfg_scale)
    step = Step(1, steps, layout=adapter.layout(run.latents, run.extras), postprocess_cfg=adapter.postprocess_cfg)
    preds = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras)
    ours = method.combine(preds, step)
    with torch.no_grad():
        u, c = (forward(pipe, run, t, row) for row in (0, 1))
        with identity_blocks(adapter, layers):
            c_skip = forward(pipe, run, t, 1)
    expected = adapter.postprocess_cfg(u + cfg_scale * (c - u), c) + scale * (c - c_skip)
    torch.testing.assert_close(ours, expected, atol=atol, rtol=1e-4)
    assert (c - c_skip).abs().max() > 1e-3, "skipping changed nothing: the test could not fail"


def check_capture_cosine(pipe, name, forward, atol=1e-5, image_of=lambda x: x, adapter=None):
    """``image_of``: the image tokens of a block's image output (default: all of it); ``adapter``: default
    ``adapter_for(pipe)`` (a video family's adapter with few frames, say)."""
    adapter = adapter or adapter_for(pipe)
    pair = PromptPair("a dog on a sidewalk", "a dog wearing a tag that says 'buddy'")
    config = CaptureConfig(model=name, prompts_file="-", pairs=1, steps=2, seed=SEED, height=H, width=W,
                           guidance=1.0, max_sequence_length=MSL)
    cosine = capture_pair(adapter, pair, config)["cosine"][0]
    run = prepare(adapter, {"a": pair.negative, "b": pair.positive}, SEED, 2, H, W, MSL)
    outputs: list[list[torch.Tensor]] = [[], []]
    for row in (0, 1):
        hooks = [block.register_forward_hook(
            lambda m, a, out, bl=bl, row=row: outputs[row].append(image_of(adapter.image_output(bl, out))))
            for _, block, bl in adapter.blocks]
        try:
            with torch.no_grad():
                forward(pipe, run, run.timesteps[0], row)
        finally:
            for hook in hooks:
                hook.remove()
    expected = torch.stack([torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
                            for a, b in zip(*outputs, strict=True)])
    torch.testing.assert_close(cosine, expected, atol=atol, rtol=1e-5)
    assert expected.min() < 0.9999, "the prompts gave equal activations: the test could not fail"


def check_baselines_run(pipe, steps, layers=("1",)):
    """S-CFG, ConceptDiffusion, APG, CFG-Zero* and skipped-negative SLG give finite images unlike CFG's."""
    request = Request("a red book and a gold clock", NEG)
    run = lambda method: sample(adapter_for(pipe), method, request, SEED, steps, H, W, MSL, output_type="np")  # noqa: E731
    cfg = run(CFG(4.0))
    for method in (SCFG(4.0), ConceptDiffusion(4.0, 4.0), APG(4.0), CFGZeroStar(4.0),
                   SkippedNegativeSLG(layers, cfg_scale=4.0)):
        image = run(method)
        assert np.isfinite(image).all(), method.name
        assert np.abs(image - cfg).max() > 1e-3, f"{method.name} gave the CFG image"


def check_save_pretrained_round_trip(pipe, tmp_path, steps, **kw):
    """The preset (its tokenizer built in code included) reloads from ``save_pretrained`` as the same pipeline."""
    from diffusers import DiffusionPipeline

    pipe.save_pretrained(tmp_path / "preset")
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / "preset"))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert {k: type(v) for k, v in loaded.components.items()} == {k: type(v) for k, v in pipe.components.items()}
    assert loaded.tokenizer(PROMPT).input_ids == pipe.tokenizer(PROMPT).input_ids
    run = lambda p: p(PROMPT, num_inference_steps=steps, height=H, width=W, max_sequence_length=MSL,  # noqa: E731
                      output_type="np", generator=torch.Generator("cpu").manual_seed(SEED), **kw).images
    assert np.abs(run(pipe) - run(loaded)).max() < 1e-5


def check_released_size(transformer_cls, released: dict, billions: float):
    """The released configuration builds the transformer class (on the meta device: no memory) with the published
    parameter count (``billions``, to 2%)."""
    assert set(released) == {"transformer", "height", "width", "steps"}
    with torch.device("meta"):
        model = transformer_cls(**released["transformer"])
    assert abs(sum(p.numel() for p in model.parameters()) / 1e9 - billions) < 0.02 * billions


def check_skip_blocks_in_the_pipeline_forward(pipe, forward, layers=("1", "3")):
    """``cslg.skip_blocks`` on the pipeline makes diffusers' own forward skip the blocks as identity hooks do."""
    from cslg.guidance.skip import skip_blocks

    adapter = adapter_for(pipe)
    run = prepare(adapter, {"cond": PROMPT}, SEED, 2, H, W, MSL)
    t = run.timesteps[0]
    with torch.no_grad():
        with skip_blocks(pipe, layers):
            ours = forward(pipe, run, t, 0)
        with identity_blocks(adapter, layers):
            ref = forward(pipe, run, t, 0)
        plain = forward(pipe, run, t, 0)
    torch.testing.assert_close(ours, ref, atol=0, rtol=0)
    assert (ours - plain).abs().max() > 1e-3, "skipping changed nothing: the test could not fail"


def check_bf16_cfg_equals_the_pipeline(name, cfg_scale, steps, **pipeline_kwargs):
    """In bfloat16 (the dtype users run) our CFG rounds as the pipeline does: the same image (measured: equal)."""
    from cslg.families import build_tiny

    pipe = build_tiny(name).to(dtype=torch.bfloat16)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(PROMPT, negative_prompt=NEG, num_inference_steps=steps, height=H, width=W, max_sequence_length=MSL,
               output_type="np", generator=torch.Generator("cpu").manual_seed(SEED), **pipeline_kwargs).images[0]
    ours = sample(adapter_for(pipe), CFG(cfg_scale), Request(PROMPT, NEG), SEED, steps, H, W, MSL, output_type="np")
    assert np.abs(ref.astype(np.float32) - ours.astype(np.float32)).max() <= 1e-4
