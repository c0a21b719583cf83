"""cslg methods as guiders of diffusers' modular pipelines: equal to ``cslg.generate`` (and to diffusers' own guiders
where diffusers has the method) on the SD3 and Qwen-Image modular pipelines built from the tiny presets'
components; a pass's hooks live only during its forward and a user's hooks keep working."""

from __future__ import annotations

import warnings

import pytest
import torch
from diffusers.guiders import AdaptiveProjectedGuidance, ClassifierFreeGuidance, ClassifierFreeZeroStarGuidance
from diffusers.hooks import HookRegistry
from diffusers.modular_pipelines import BlockState
from diffusers.modular_pipelines.qwenimage import QwenImageAutoBlocks
from diffusers.modular_pipelines.stable_diffusion_3 import StableDiffusion3AutoBlocks
from torch.overrides import _get_current_function_mode_stack

import cslg
from cslg.families import adapter_for_transformer
from cslg.guidance.guiders import MethodGuider

from ..helpers import tiny
from .test_skip import CountingHook, _sd3_inputs, users_hooks

SD3, QWEN = "tiny-sd3", "tiny-qwenimage"
BLOCKS = {SD3: StableDiffusion3AutoBlocks, QWEN: QwenImageAutoBlocks}
SIZE = dict(height=32, width=32, max_sequence_length=32)
STEPS = 2
PROMPT, NEGATIVE = "a red mug on a table", "blurry"
ATOL = 1e-5  # the batched executor of cslg.generate against one forward per pass: ~5e-6 seen

_MODULAR: dict = {}


def modular(preset: str, decode: bool = False):
    """The modular pipeline of the preset's components; without its decode step it returns the denoised latents."""
    if (preset, decode) not in _MODULAR:
        pipe, blocks = tiny(preset), BLOCKS[preset]()
        if not decode:
            blocks.sub_blocks.pop("decode")
        mp = blocks.init_pipeline()
        mp.update_components(**{k: v for k, v in pipe.components.items() if k in mp._component_specs})
        _MODULAR[preset, decode] = mp
    return _MODULAR[preset, decode]


def run_modular(preset: str, guider, decode: bool = False, **kwargs) -> torch.Tensor:
    mp = modular(preset, decode)
    mp.update_components(guider=guider)
    inputs = dict(prompt=PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS,
                  generator=torch.Generator("cpu").manual_seed(0), **SIZE) | kwargs
    return mp(**inputs, output="images" if decode else "latents")


def run_generate(preset: str, method, output_type: str = "latent") -> torch.Tensor:
    pipe = tiny(preset)
    out = cslg.generate(pipe, PROMPT, method, negative_prompt=NEGATIVE, steps=STEPS, output_type=output_type,
                        progress=False, **SIZE).images
    if output_type == "latent" and preset == QWEN:  # the modular denoise step ends unpacking them
        out = pipe._unpack_latents(out, SIZE["height"], SIZE["width"], pipe.vae_scale_factor)
    return out


def guided(preset: str, method, **kwargs) -> torch.Tensor:
    return run_modular(preset, cslg.diffusers_guider(method, modular(preset)), **kwargs)


_CFG: dict = {}


def cfg_latents(preset: str) -> torch.Tensor:
    if preset not in _CFG:
        _CFG[preset] = run_generate(preset, cslg.CFG())
    return _CFG[preset]


BOTH = [
    ("cfg", cslg.CFG()),
    ("cslg", cslg.CSLG(["2"], 2.0)),
    ("cslg-weights", cslg.CSLG(["1", "3"], 2.0, weights=(1.0, 3.0))),
    ("slg", cslg.SLG(["2"], start=0.0, stop=1.0)),
    ("pag", cslg.PAG(["1"], 2.0)),
    ("apg", cslg.APG(5.0)),
    ("cfgzero", cslg.CFGZeroStar(5.0, zero_init_steps=0)),
    ("slg-neg", cslg.SkippedNegativeSLG(["3"])),
    ("none", cslg.NoGuidance()),
]
# Qwen-Image's modular denoise step rescales every guider output to the norm of the conditional prediction (its
# classic pipeline only with true CFG, as cslg.generate): methods without a negative pass, and CFG-Zero*'s zero
# velocity (0/0 there), run on SD3 only
SD3_ONLY = [
    ("cslg-no-cfg", cslg.CSLG(["2"], 2.0, cfg_scale=1.0)),
    ("pag-no-cfg", cslg.PAG(["1"], 2.0, cfg_scale=1.0)),
    ("cfgzero-init", cslg.CFGZeroStar(5.0, zero_init_steps=1)),
]
CASES = [(p, n, m) for p in (SD3, QWEN) for n, m in BOTH] + [(SD3, n, m) for n, m in SD3_ONLY]


@pytest.mark.parametrize("preset,name,method", CASES, ids=[f"{p[5:]}-{n}" for p, n, _ in CASES])
def test_guider_equals_generate(preset, name, method):
    out = guided(preset, method)
    torch.testing.assert_close(out, run_generate(preset, method), rtol=0, atol=ATOL)
    if name != "cfg":
        assert (out - cfg_latents(preset)).abs().max() > 1e-3, "equals CFG: the test could not fail"


@pytest.mark.parametrize("preset", [SD3, QWEN])
def test_guider_equals_diffusers_guiders(preset):
    zero_init = 1 if preset == SD3 else 0
    pairs = [
        (cslg.CFG(5.0), ClassifierFreeGuidance(guidance_scale=5.0)),
        (cslg.CFGZeroStar(5.0, zero_init), ClassifierFreeZeroStarGuidance(guidance_scale=5.0, zero_init_steps=zero_init)),
        (cslg.APG(5.0, eta=0.0, norm_threshold=15.0, momentum=-0.5),
         AdaptiveProjectedGuidance(guidance_scale=5.0, adaptive_projected_guidance_momentum=-0.5,
                                   adaptive_projected_guidance_rescale=15.0, eta=0.0)),
    ]
    for ours, theirs in pairs:
        torch.testing.assert_close(guided(preset, ours), run_modular(preset, theirs), rtol=0, atol=1e-6)


@pytest.mark.parametrize("preset", [SD3, QWEN])
def test_full_modular_pipeline_images_equal_generate(preset):
    method = cslg.CSLG(["2"], 2.0)
    images = run_modular(preset, cslg.diffusers_guider(method, modular(preset, decode=True)), decode=True,
                         output_type="pt")
    torch.testing.assert_close(images, run_generate(preset, method, "pt"), rtol=0, atol=ATOL)


def _clean(module) -> bool:
    return "forward" not in vars(module) and not hasattr(module, "_diffusers_hook")


def _attention_hooks(transformer) -> int:
    return sum(len(m._forward_pre_hooks) + len(m._forward_hooks) for m in transformer.modules())


def test_hooks_are_gone_after_a_run_and_a_users_hooks_keep_working():
    tr = tiny(SD3).transformer
    blocks = tr.transformer_blocks
    inputs = _sd3_inputs(tiny(SD3))
    with torch.no_grad():
        before = tr(**inputs)[0]
    reference = run_generate(SD3, cslg.CSLG(["2"], 2.0))
    on_transformer = CountingHook()
    HookRegistry.check_if_exists_or_initialize(tr).register_hook(on_transformer, "user")
    try:
        with users_hooks(blocks) as (kept, skipped, torch_calls):
            # per step: uncond, cond, cond with block 2 skipped (CSLG), then the same with identity attention (PAG)
            out = guided(SD3, cslg.CSLG(["2"], 2.0))
            assert kept.calls == 3 * STEPS and skipped.calls == 2 * STEPS and len(torch_calls) == 3 * STEPS
            torch.testing.assert_close(out, reference, rtol=0, atol=ATOL)
            guided(SD3, cslg.PAG(["2"], 2.0))
            assert skipped.calls == 5 * STEPS  # identity attention runs the block, its hooks included
            assert on_transformer.calls == 6 * STEPS
            for module in (blocks[0], blocks[2], tr):
                assert list(module._diffusers_hook.hooks) == ["user"]
    finally:
        tr._diffusers_hook.remove_hook("user", recurse=False)
        del tr._diffusers_hook
        vars(tr).pop("forward", None)
    assert _clean(tr) and all(_clean(b) for b in blocks) and _attention_hooks(tr) == 0
    assert not _get_current_function_mode_stack()
    with torch.no_grad():
        torch.testing.assert_close(tr(**inputs)[0], before, rtol=0, atol=0)


def test_a_pass_that_raises_leaves_no_perturbation_behind():
    tr = tiny(SD3).transformer
    inputs = _sd3_inputs(tiny(SD3))
    with torch.no_grad():
        before = tr(**inputs)[0]
    calls = []

    def fail_in_the_skip_pass(module, args, kwargs):  # the third forward of step 0: the pass with block 2 skipped
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")

    handle = tr.transformer_blocks[4].register_forward_pre_hook(fail_in_the_skip_pass, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            guided(SD3, cslg.CSLG(["2"], 2.0))
    finally:
        handle.remove()
    assert all(_clean(b) for b in tr.transformer_blocks)
    with torch.no_grad():  # only an inert wrapper is left on the transformer, removed by the guider's next batch
        torch.testing.assert_close(tr(**inputs)[0], before, rtol=0, atol=0)
    torch.testing.assert_close(guided(SD3, cslg.CSLG(["2"], 2.0)), run_generate(SD3, cslg.CSLG(["2"], 2.0)),
                               rtol=0, atol=ATOL)
    assert _clean(tr)


def test_guider_settings_round_trip_and_disable(tmp_path):
    mp = modular(SD3)
    guider = cslg.diffusers_guider(cslg.PAG(), mp)
    assert guider.method == cslg.PAG(["1"], cfg_scale=7.0)  # the family's defaults, as cslg.generate binds them
    assert guider.new().method == guider.method
    guider.save_pretrained(tmp_path)
    assert MethodGuider.from_pretrained(tmp_path).method == guider.method
    guider.disable()
    torch.testing.assert_close(run_modular(SD3, guider), run_generate(SD3, cslg.NoGuidance()), rtol=0, atol=ATOL)


@pytest.mark.parametrize("preset,method", [(SD3, cslg.APG(5.0)), (QWEN, cslg.APG(5.0, stop=0.5))])
def test_a_guider_runs_twice_alike(preset, method):
    """APG's momentum average belongs to one sampling run; a last step without the negative pass does not keep the
    next run from encoding the negative prompt (Qwen-Image asks the guider before its loop)."""
    guider = cslg.diffusers_guider(method, modular(preset))
    first, second = run_modular(preset, guider), run_modular(preset, guider)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, run_generate(preset, method), rtol=0, atol=ATOL)


def test_degenerate_settings_warn():
    with pytest.warns(cslg.DegenerateMethodWarning, match="scale 0: equals cfg"):
        guided(SD3, cslg.CSLG(["2"], 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("error", cslg.DegenerateMethodWarning)
        guided(SD3, cslg.CSLG(["2"], 1.0))


def test_prepare_inputs_from_block_state():
    guider = cslg.diffusers_guider(cslg.CSLG(["2"], 2.0), modular(SD3))
    cond, uncond, t = torch.ones(1, 3), torch.zeros(1, 3), torch.tensor(500.0)
    fields = {"encoder_hidden_states": ("prompt_embeds", "negative_prompt_embeds"), "timestep": "t"}
    guider.set_state(step=1, num_inference_steps=STEPS, timestep=t)
    batches = guider.prepare_inputs_from_block_state(BlockState(prompt_embeds=cond, negative_prompt_embeds=uncond,
                                                                t=t), fields)
    assert [b.__guidance_identifier__ for b in batches] == ["uncond", "cond", "cond_perturbed0"]
    assert [b.encoder_hidden_states for b in batches] == [uncond, cond, cond] and all(b.timestep is t for b in batches)
    with pytest.raises(ValueError, match="no negative-prompt embeddings"):
        guider.prepare_inputs_from_block_state(BlockState(prompt_embeds=cond, negative_prompt_embeds=None, t=t),
                                               fields)


def test_bad_input_is_refused_naming_it():
    mp = modular(SD3)
    with pytest.raises(ValueError, match="concept cannot run as a diffusers guider: it encodes concept0"):
        cslg.diffusers_guider(cslg.ConceptDiffusion(cfg_scale=5.0), mp)
    with pytest.raises(ValueError, match="scfg cannot run as a diffusers guider: its formula needs the attention"):
        cslg.diffusers_guider(cslg.SCFG(5.0), mp)
    with pytest.raises(cslg.LayerError, match="valid layers are 0-5"):
        cslg.diffusers_guider(cslg.CSLG(["9"], 2.0), mp)
    with pytest.raises(TypeError, match="method: expected a guidance method"):
        cslg.diffusers_guider("cfg", mp)
    with pytest.raises(TypeError, match="pipe: expected a diffusers pipeline with a loaded transformer"):
        cslg.diffusers_guider(cslg.CFG(5.0), object())
    with pytest.raises(ValueError, match="unsupported transformer Linear"):
        cslg.diffusers_guider(cslg.CFG(5.0), torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="cfg_scale defaults to the model family's own"):
        MethodGuider(method=cslg.CFG().to_dict())
    with pytest.raises(ValueError, match="no negative-prompt embeddings; pass negative_prompt"):
        run_modular(SD3, cslg.diffusers_guider(cslg.CFG(5.0), mp), negative_prompt=None)


def test_adapter_for_a_transformer_alone():
    for preset in (SD3, QWEN):
        pipe = tiny(preset)
        adapter = adapter_for_transformer(pipe.transformer)
        assert type(adapter) is type(cslg.adapter_for(pipe)) and adapter.transformer is pipe.transformer
        assert [b for _, b, _ in adapter.blocks] == list(pipe.transformer.transformer_blocks)
        with pytest.raises(AttributeError, match="built from the transformer alone.*'encode_prompt' needs the pipeline"):
            adapter.encode(["a mug"], 32)
