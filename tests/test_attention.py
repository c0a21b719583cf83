"""Tests for cslg.attention: recording processors on the tiny SD3, SD3.5 and FLUX pipelines."""

from __future__ import annotations

import pytest
import torch
from diffusers.models.transformers import transformer_flux

import cslg.attention as attention
from cslg.attention import attention_probs, record_attention, split_roles, text_roles
from cslg.denoiser import Pass, make_denoiser
from cslg.models import family_of, load_pipeline

PRESETS = ("tiny-sd3", "tiny-sd35", "tiny-flux")
PROMPTS = ["", "a red book and a gold clock"]
SIZE = 32  # pixels: an 8x8 token grid on every tiny preset
TEXT_LEN = 16  # T5 tokens


@pytest.fixture(scope="module", params=PRESETS)
def denoiser(request):
    return make_denoiser(load_pipeline(request.param, device="cpu"))


def step_inputs(denoiser):
    cond = denoiser.encode(PROMPTS, TEXT_LEN)
    latents = denoiser.initial_noise(0, SIZE, SIZE)
    return latents, denoiser.timesteps(2, latents)[0], cond


def predict_with_block_outputs(denoiser) -> tuple[torch.Tensor, list]:
    """The prediction of the passes [negative, prompt] and every block's output tuple."""
    outputs = []
    hooks = [block.register_forward_hook(lambda m, a, out: outputs.append(out)) for _, block in denoiser.blocks]
    try:
        latents, t, cond = step_inputs(denoiser)
        pred = denoiser.predict(latents, t, cond, [Pass(0), Pass(1)])
    finally:
        for hook in hooks:
            hook.remove()
    return pred, outputs


def test_recording_leaves_outputs_unchanged_and_restores(denoiser):
    processors = [block.attn.processor for _, block in denoiser.blocks]
    pred, outputs = predict_with_block_outputs(denoiser)
    with record_attention(denoiser, denoiser.layer_names) as recorder:
        pred_rec, outputs_rec = predict_with_block_outputs(denoiser)
        recorder.take()
    assert torch.equal(pred, pred_rec)
    for out, out_rec in zip(outputs, outputs_rec, strict=True):
        for x, y in zip(out, out_rec, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)
    for (_, block), processor in zip(denoiser.blocks, processors):
        assert block.attn.processor is processor
        assert not block._forward_pre_hooks and not block.attn.to_q._forward_hooks and not block.attn.to_k._forward_hooks


def test_recorded_maps_equal_naive_softmax(denoiser, monkeypatch):
    """Capture q and k where the default processors hand them to the attention kernel, take the full softmax
    matrix, and compare with the chunked, block-averaged recording."""
    flux = family_of(denoiser.pipe) == "flux"
    captured = []  # (q, k) as [B, H, L, d]
    module, kernel_name = (transformer_flux, "dispatch_attention_fn") if flux else (torch.nn.functional, "scaled_dot_product_attention")
    kernel = getattr(module, kernel_name)

    def capturing_kernel(q, k, v, **kwargs):
        captured.append((q.transpose(1, 2), k.transpose(1, 2)) if flux else (q, k))  # FLUX passes [B, L, H, d]
        return kernel(q, k, v, **kwargs)

    monkeypatch.setattr(module, kernel_name, capturing_kernel)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 4000)  # several chunks of queries per block
    latents, t, cond = step_inputs(denoiser)
    with record_attention(denoiser, denoiser.layer_names) as recorder:
        denoiser.predict(latents, t, cond, [Pass(0), Pass(1)])
        maps = recorder.take()

    n, text_len = SIZE**2 // 16, cond.prompt_embeds.shape[1]
    image, text = (slice(text_len, None), slice(0, text_len)) if flux else (slice(0, n), slice(n, None))
    joint = [(q, k) for q, k in captured if k.shape[2] == n + text_len]  # SD3.5's attn2 sees image keys only
    assert len(joint) == len(denoiser.blocks)
    cross, self_attn = 0, 0
    for q, k in joint:
        probs = torch.softmax(q.float() @ k.float().transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1).mean(1)
        rows = probs[:, image]
        torch.testing.assert_close(attention_probs(q[:, :, image], k), rows, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]), rtol=0, atol=1e-5)
        cross = cross + rows[..., text] / rows[..., text].sum(-1, keepdim=True)
        self_attn = self_attn + rows[..., image] / rows[..., image].sum(-1, keepdim=True)
    torch.testing.assert_close(maps.cross, cross / len(joint), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(maps.self_attn, self_attn / len(joint), rtol=1e-4, atol=1e-6)


def test_lanes_select_batch_entries(denoiser):
    latents, t, cond = step_inputs(denoiser)
    layers = denoiser.layer_names[1:3]
    with record_attention(denoiser, layers) as all_lanes:
        denoiser.predict(latents, t, cond, [Pass(0), Pass(1)])
        every = all_lanes.take()
    with record_attention(denoiser, layers, lanes=[1]) as one_lane:
        denoiser.predict(latents, t, cond, [Pass(0), Pass(1)])
        one = one_lane.take()
    torch.testing.assert_close(one.cross, every.cross[1:], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one.self_attn, every.self_attn[1:], rtol=1e-5, atol=1e-7)
    with pytest.raises(RuntimeError, match="no attention"):
        one_lane.take()


def test_attention_probs_rows_sum_to_one_and_split_renormalises():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 9, 8)
    probs = attention_probs(q, k)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    cross, self_attn = split_roles(probs, slice(0, 4), slice(4, 9))
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(self_attn.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(cross * probs[..., :4].sum(-1, keepdim=True), probs[..., :4])


def test_text_roles():
    flux = load_pipeline("tiny-flux", device="cpu")
    roles = text_roles(flux, "a dog", TEXT_LEN)  # the tiny T5 is character level: "▁a", "▁d", "o", "g", "</s>"
    ids = flux.tokenizer_2("a dog").input_ids
    assert roles.content == tuple(range(len(ids) - 1))
    assert roles.background == tuple(range(len(ids), TEXT_LEN))
    assert text_roles(flux, "x" * 40, TEXT_LEN).background == (TEXT_LEN - 1,)  # no padding: </s>
    sd3 = load_pipeline("tiny-sd3", device="cpu")
    roles = text_roles(sd3, "a dog", 77 + TEXT_LEN)
    assert roles.background == (0,)
    assert roles.content == tuple(range(1, len(sd3.tokenizer("a dog").input_ids) - 1))
    assert roles.others == tuple(range(1, 77 + TEXT_LEN))

