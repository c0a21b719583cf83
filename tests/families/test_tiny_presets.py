"""The tiny Qwen-Image and PixArt-Σ presets: real diffusers classes, offline tokenizers, deterministic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKLQwenImage,
    DiffusionPipeline,
    DPMSolverMultistepScheduler,
    FlowMatchEulerDiscreteScheduler,
    PixArtSigmaPipeline,
    PixArtTransformer2DModel,
    QwenImagePipeline,
    QwenImageTransformer2DModel,
)
from transformers import Qwen2_5_VLForConditionalGeneration

from cslg.families import build_tiny
from cslg.families.tiny import QWEN_PROMPT_TEMPLATE, qwen_tokenizer
from cslg.options import TINY_PRESETS

from ..helpers import H, MSL, W, tiny

PROMPT = "a sign that says 'OPEN'"
NEG = "blurry, low quality"
STEPS = 3
# save_pretrained / from_pretrained reloads bit-identical weights, but mmap-loaded tensors may be aligned
# differently, so CPU matmuls can round differently in the last bit.
RT_TOL = 1e-5

QWEN_CFG = dict(negative_prompt=NEG, true_cfg_scale=4.0)
PIXART = dict(use_resolution_binning=False, clean_caption=False)


def _run(pipe, prompt=PROMPT, seed=0, **kw) -> np.ndarray:
    return pipe(prompt, num_inference_steps=STEPS, height=H, width=W, max_sequence_length=MSL, output_type="np",
                generator=torch.Generator("cpu").manual_seed(seed), **kw).images


def _modules(pipe):
    return {k: v for k, v in pipe.components.items() if isinstance(v, torch.nn.Module)}


@pytest.mark.parametrize("name,cls,transformer_cls", [
    ("tiny-qwenimage", QwenImagePipeline, QwenImageTransformer2DModel),
    ("tiny-pixart-sigma", PixArtSigmaPipeline, PixArtTransformer2DModel),
])
def test_presets_are_real_small_classes_in_eval_mode(name, cls, transformer_cls):
    assert name in TINY_PRESETS
    pipe = tiny(name)
    assert type(pipe) is cls and type(pipe.transformer) is transformer_cls
    assert len(pipe.transformer.transformer_blocks) == 6
    for key, module in _modules(pipe).items():
        assert not module.training, f"{name}: {key} is in train mode"
        assert sum(p.numel() for p in module.parameters()) < 1_000_000, f"{name}: {key} is not tiny"


def test_qwen_components():
    pipe = tiny("tiny-qwenimage")
    assert isinstance(pipe.vae, AutoencoderKLQwenImage)
    assert isinstance(pipe.text_encoder, Qwen2_5_VLForConditionalGeneration)
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.use_dynamic_shifting
    cfg = pipe.transformer.config
    assert cfg.in_channels == 4 * pipe.vae.config.z_dim and cfg.out_channels == pipe.vae.config.z_dim
    assert cfg.joint_attention_dim == pipe.text_encoder.config.text_config.hidden_size
    assert sum(cfg.axes_dims_rope) == cfg.attention_head_dim
    assert len(pipe.vae.config.latents_mean) == len(pipe.vae.config.latents_std) == pipe.vae.config.z_dim
    assert pipe.vae_scale_factor == 2
    tok, te = pipe.tokenizer, pipe.text_encoder.config
    assert te.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") != tok.unk_token_id
    assert te.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert te.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert te.text_config.vocab_size == len(tok)


def test_qwen_tokenizer_encodes_the_template_prefix_in_exactly_the_dropped_tokens():
    pipe = tiny("tiny-qwenimage")
    assert pipe.prompt_template_encode == QWEN_PROMPT_TEMPLATE
    prefix = pipe.prompt_template_encode.split("{}")[0]
    ids = pipe.tokenizer(prefix).input_ids
    assert len(ids) == pipe.prompt_template_encode_start_idx == 34
    full = pipe.tokenizer(pipe.prompt_template_encode.format(PROMPT)).input_ids
    assert full[:34] == ids  # the prompt starts a new token right after the dropped prefix
    assert pipe.tokenizer.decode(full[34:]) == PROMPT + "<|im_end|>\n<|im_start|>assistant\n"
    assert pipe.tokenizer.decode(full) == pipe.prompt_template_encode.format(PROMPT)
    assert qwen_tokenizer()(prefix).input_ids == ids


def test_qwen_encode_prompt_masks_padding():
    pipe = tiny("tiny-qwenimage")
    short, long = "a sign", PROMPT + " above a door"
    one, mask_one = pipe.encode_prompt(short, device="cpu")
    assert mask_one is None  # a single prompt has no padding: the pipeline drops the all-ones mask
    both, mask = pipe.encode_prompt([short, long], device="cpu")
    n_short = one.shape[1]
    assert both.shape[1] > n_short
    assert mask.tolist()[0] == [1] * n_short + [0] * (both.shape[1] - n_short)
    assert mask[1].all()
    torch.testing.assert_close(both[0, :n_short], one[0], atol=1e-5, rtol=1e-5)
    assert (both[0, n_short:] == 0).all()


@pytest.mark.parametrize("kw", [{}, QWEN_CFG], ids=["no-cfg", "true-cfg"])
def test_qwen_images_are_finite_and_deterministic(kw):
    a = _run(build_tiny("tiny-qwenimage"), **kw)
    b = _run(build_tiny("tiny-qwenimage"), **kw)
    assert a.shape == (1, H, W, 3) and np.isfinite(a).all()
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 1e-3
    assert np.array_equal(a, b)


def test_qwen_text_and_cfg_reach_the_image():
    pipe = tiny("tiny-qwenimage")
    plain = _run(pipe)
    assert np.abs(plain - _run(pipe, **QWEN_CFG)).max() > 1e-4
    assert np.abs(plain - _run(pipe, prompt="a red apple on a table")).max() > 1e-4
    assert np.array_equal(plain, _run(pipe, negative_prompt=NEG, true_cfg_scale=1.0))  # CFG off at scale 1


def test_pixart_components():
    pipe = tiny("tiny-pixart-sigma")
    cfg = pipe.transformer.config
    assert cfg.out_channels == 2 * cfg.in_channels == 2 * pipe.vae.config.latent_channels  # learned sigma
    assert cfg.caption_channels == pipe.text_encoder.config.d_model
    assert cfg.norm_type == "ada_norm_single" and not pipe.transformer.use_additional_conditions
    sched = pipe.scheduler
    assert isinstance(sched, DPMSolverMultistepScheduler)
    assert (sched.config.beta_schedule, sched.config.beta_start, sched.config.beta_end) == ("linear", 0.0001, 0.02)
    assert (sched.config.prediction_type, sched.config.num_train_timesteps) == ("epsilon", 1000)
    assert (sched.config.algorithm_type, sched.config.solver_order) == ("dpmsolver++", 2)
    embeds, mask, neg, neg_mask = pipe.encode_prompt(PROMPT, True, device="cpu", max_sequence_length=MSL)
    assert embeds.shape == (1, MSL, cfg.caption_channels) and neg.shape == embeds.shape
    n = len(pipe.tokenizer(PROMPT.lower()).input_ids)
    assert mask.tolist() == [[1] * n + [0] * (MSL - n)] and neg_mask.sum() == 1  # "" is just </s>


def test_pixart_transformer_predicts_learned_sigma():
    pipe = tiny("tiny-pixart-sigma")
    c = pipe.vae.config.latent_channels
    x = torch.randn(2, c, H // pipe.vae_scale_factor, W // pipe.vae_scale_factor)
    text = torch.randn(2, 5, pipe.transformer.config.caption_channels)
    with torch.no_grad():
        out = pipe.transformer(x, encoder_hidden_states=text, timestep=torch.tensor([999, 10]),
                               added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False)[0]
    assert out.shape == (2, 2 * c, *x.shape[2:]) and torch.isfinite(out).all()


@pytest.mark.parametrize("guidance", [4.5, 1.0])
def test_pixart_images_are_finite_and_deterministic(guidance):
    a = _run(build_tiny("tiny-pixart-sigma"), guidance_scale=guidance, **PIXART)
    b = _run(build_tiny("tiny-pixart-sigma"), guidance_scale=guidance, **PIXART)
    assert a.shape == (1, H, W, 3) and np.isfinite(a).all()
    assert 0.0 <= a.min() and a.max() <= 1.0 and a.std() > 1e-3
    assert np.array_equal(a, b)


def test_pixart_text_and_cfg_reach_the_image():
    pipe = tiny("tiny-pixart-sigma")
    plain = _run(pipe, guidance_scale=1.0, **PIXART)
    assert np.abs(plain - _run(pipe, guidance_scale=4.5, **PIXART)).max() > 1e-4
    assert np.abs(plain - _run(pipe, prompt="a red apple on a table", guidance_scale=1.0, **PIXART)).max() > 1e-4


def test_builds_are_deterministic_and_seeded():
    for name in ("tiny-qwenimage", "tiny-pixart-sigma"):
        a, b, other = build_tiny(name), build_tiny(name), build_tiny(name, seed=1)
        for key, module in _modules(a).items():
            sa, sb = module.state_dict(), _modules(b)[key].state_dict()
            assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), f"{name}: {key}"
        assert not torch.equal(a.transformer.proj_out.weight, other.transformer.proj_out.weight)


@pytest.mark.parametrize("name,kw", [
    ("tiny-qwenimage", QWEN_CFG),
    ("tiny-pixart-sigma", dict(guidance_scale=4.5, **PIXART)),
])
def test_save_pretrained_round_trip(name, kw, tmp_path):
    pipe = tiny(name)
    pipe.save_pretrained(tmp_path / name)
    loaded = DiffusionPipeline.from_pretrained(str(tmp_path / name))
    loaded.set_progress_bar_config(disable=True)
    assert type(loaded) is type(pipe)
    assert {k: type(v) for k, v in loaded.components.items()} == {k: type(v) for k, v in pipe.components.items()}
    public = lambda config: {k: v for k, v in config.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(pipe.scheduler.config)
    text = pipe.prompt_template_encode.format(PROMPT) if name == "tiny-qwenimage" else PROMPT
    assert loaded.tokenizer(text).input_ids == pipe.tokenizer(text).input_ids
    ref, out = _run(pipe, **kw), _run(loaded, **kw)
    assert np.isfinite(out).all() and np.abs(ref - out).max() < RT_TOL
