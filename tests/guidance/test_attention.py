"""Tests for cslg.attention: recording image-query attention through the executor on the tiny SD3, SD3.5 and
FLUX pipelines (attention is intercepted at ``torch.nn.functional.scaled_dot_product_attention``)."""

from __future__ import annotations

import pytest
import torch

import cslg
import cslg.guidance.attention as attention
from cslg.guidance.attention import AttentionSink, attention_probs, renormalise, split_roles
from cslg.guidance.executor import Executor
from cslg.guidance.passes import Pass
from cslg.families import adapter_for
from cslg.guidance.sampling import prepare

from ..helpers import tiny

PRESETS = ("tiny-sd3", "tiny-sd35", "tiny-flux")
CONDITIONS = {"uncond": "", "cond": "a red book and a gold clock"}
PASSES = {"uncond": Pass("uncond"), "cond": Pass("cond")}  # lane 0: uncond, lane 1: cond
SIZE = 32  # pixels: an 8x8 token grid on every tiny preset
TEXT_LEN = 16  # T5 tokens


@pytest.fixture(scope="module", params=PRESETS)
def adapter(request):
    return adapter_for(tiny(request.param))


@pytest.fixture(scope="module")
def run(adapter):
    return prepare(adapter, CONDITIONS, 0, 2, SIZE, SIZE, TEXT_LEN)


def predict(adapter, run, record=None) -> dict[str, torch.Tensor]:
    return Executor(adapter).predict(run.latents, run.timesteps[0], run.cond, run.conditions, PASSES, run.extras,
                                     record=record)


def predict_with_block_outputs(adapter, run, record=None) -> tuple[dict[str, torch.Tensor], list]:
    """The predictions of the passes [uncond, cond] and every block's raw output."""
    outputs = []
    hooks = [block.register_forward_hook(lambda m, a, out: outputs.append(out)) for _, block, _ in adapter.blocks]
    try:
        preds = predict(adapter, run, record)
    finally:
        for hook in hooks:
            hook.remove()
    return preds, outputs


def attention_modules(adapter) -> list[torch.nn.Module]:
    return [m for _, block, bl in adapter.blocks for m, _ in adapter.attention_calls(block, bl)]


def test_recording_leaves_outputs_unchanged_and_restores(adapter, run):
    sdpa = torch.nn.functional.scaled_dot_product_attention
    processors = [m.processor for m in attention_modules(adapter)]
    preds, outputs = predict_with_block_outputs(adapter, run)
    sink = AttentionSink()
    preds_rec, outputs_rec = predict_with_block_outputs(adapter, run, (adapter.layer_names, list(PASSES), sink))
    maps = sink.take()
    assert set(maps) == set(PASSES), "nothing was recorded: the test could not fail"
    assert preds.keys() == preds_rec.keys()
    for name in preds:
        assert torch.equal(preds[name], preds_rec[name])
    assert len(outputs) == len(outputs_rec) == len(adapter.blocks)
    for out, out_rec in zip(outputs, outputs_rec, strict=True):
        for x, y in zip(out, out_rec, strict=True):
            assert (x is None and y is None) or torch.equal(x, y)
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    for module, processor in zip(attention_modules(adapter), processors, strict=True):
        assert module.processor is processor
        assert not module._forward_pre_hooks and not module._forward_hooks
    for _, block, _ in adapter.blocks:
        assert not block._forward_pre_hooks and not block._forward_hooks


def test_recorded_maps_equal_naive_softmax(adapter, run, monkeypatch):
    """Capture q and k where the attention kernel receives them, take the full softmax matrix, and compare with
    the chunked, block-averaged recording of each pass."""
    captured = []  # (q, k, mask, scale) with q, k as [B, H, L, d]
    kernel = torch.nn.functional.scaled_dot_product_attention

    def capturing_kernel(query, key, value, attn_mask=None, *args, **kwargs):
        captured.append((query, key, attn_mask, kwargs.get("scale")))
        return kernel(query, key, value, attn_mask, *args, **kwargs)

    # patched before the recording context starts: the routed SDPA calls what was there when it started
    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", capturing_kernel)
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 4000)  # several chunks of queries per block
    sink = AttentionSink()
    predict(adapter, run, (adapter.layer_names, list(PASSES), sink))
    maps = sink.take()

    n, text_len = SIZE**2 // 16, run.cond.embeds.shape[1]
    text_first = adapter.name == "flux"
    image, text = (slice(text_len, None), slice(0, text_len)) if text_first else (slice(0, n), slice(n, None))
    joint = [c for c in captured if c[1].shape[2] == n + text_len]  # SD3.5's attn2 sees image keys only
    assert len(joint) == len(adapter.blocks)
    assert all(q.shape[0] == len(PASSES) for q, *_ in joint)
    cross, self_attn = 0, 0
    for q, k, mask, scale in joint:
        scale = q.shape[-1] ** -0.5 if scale is None else scale
        logits = q.float() @ k.float().transpose(-1, -2) * scale
        if mask is not None:
            logits = logits + (mask if mask.dtype != torch.bool else torch.zeros_like(logits).masked_fill(~mask, -torch.inf))
        probs = torch.softmax(logits, dim=-1).mean(1)
        rows = probs[:, image]
        torch.testing.assert_close(attention_probs(q[:, :, image], k, scale, mask), rows, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(rows.sum(-1), torch.ones(rows.shape[:2]), rtol=0, atol=1e-5)
        cross = cross + rows[..., text] / rows[..., text].sum(-1, keepdim=True)
        self_attn = self_attn + rows[..., image] / rows[..., image].sum(-1, keepdim=True)
    cross, self_attn = cross / len(joint), self_attn / len(joint)
    for lane, name in enumerate(PASSES):
        assert maps[name].cross.shape == (n, text_len) and maps[name].self_attn.shape == (n, n)
        torch.testing.assert_close(maps[name].cross, cross[lane], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(maps[name].self_attn, self_attn[lane], rtol=1e-4, atol=1e-6)
    assert (maps["cond"].cross - maps["uncond"].cross).abs().max() > 1e-4, "the lanes agree: the test could not fail"


def test_recorded_passes_and_layers_select_maps(adapter, run):
    layers = adapter.layer_names[1:3]
    sink = AttentionSink()
    predict(adapter, run, (layers, list(PASSES), sink))
    every = sink.take()
    predict(adapter, run, (layers, ["cond"], sink))
    one = sink.take()
    assert set(every) == {"uncond", "cond"} and set(one) == {"cond"}
    torch.testing.assert_close(one["cond"].cross, every["cond"].cross, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(one["cond"].self_attn, every["cond"].self_attn, rtol=1e-5, atol=1e-7)
    assert sink.take() == {}  # take clears
    predict(adapter, run, (adapter.layer_names[1:2], ["cond"], sink))
    first = sink.take()["cond"]
    assert (first.cross - one["cond"].cross).abs().max() > 1e-6, "the layers agree: the test could not fail"


def test_sink_averages_blocks_and_needs_both_roles():
    sink = AttentionSink()
    for x in (1.0, 3.0):
        sink.add("cond", "cross", torch.full((2, 3), x))
        sink.add("cond", "self", torch.full((2, 2), 2 * x))
    maps = sink.take()["cond"]
    assert torch.equal(maps.cross, torch.full((2, 3), 2.0)) and torch.equal(maps.self_attn, torch.full((2, 2), 4.0))
    sink.add("cond", "cross", torch.ones(2, 3))
    with pytest.raises(RuntimeError, match="need cross and self"):
        sink.take()


def test_attention_probs_rows_sum_to_one_and_split_renormalises():
    torch.manual_seed(0)
    q, k = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 9, 8)
    probs = attention_probs(q, k)
    naive = torch.softmax(torch.einsum("bhnd,bhld->bhnl", q, k) / 8**0.5, dim=-1).mean(1)
    torch.testing.assert_close(probs, naive)
    torch.testing.assert_close(probs.sum(-1), torch.ones(2, 5))
    cross, self_attn = split_roles(probs, slice(0, 4), slice(4, 9))
    torch.testing.assert_close(cross.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(self_attn.sum(-1), torch.ones(2, 5))
    torch.testing.assert_close(cross * probs[..., :4].sum(-1, keepdim=True), probs[..., :4])
    torch.testing.assert_close(renormalise(probs[..., 4:]), self_attn)
    # scale and an additive mask enter the logits as in scaled_dot_product_attention
    mask = torch.zeros(5, 9).masked_fill(torch.arange(9) >= 6, -torch.inf)
    masked = attention_probs(q, k, 0.3, mask)
    torch.testing.assert_close(masked, torch.softmax(torch.einsum("bhnd,bhld->bhnl", q, k) * 0.3 + mask, -1).mean(1))
    assert torch.all(masked[..., 6:] == 0)


def test_text_roles():
    flux = adapter_for(tiny("tiny-flux"))
    roles = flux.text_roles("a dog", TEXT_LEN)  # the tiny T5 is character level: "▁a", "▁d", "o", "g", "</s>"
    ids = flux.pipe.tokenizer_2("a dog").input_ids
    assert roles.content == tuple(range(len(ids) - 1))
    assert roles.background == tuple(range(len(ids), TEXT_LEN))
    assert flux.text_roles("x" * 40, TEXT_LEN).background == (TEXT_LEN - 1,)  # no padding: </s>
    sd3 = adapter_for(tiny("tiny-sd3"))
    roles = sd3.text_roles("a dog", 77 + TEXT_LEN)
    assert roles.background == (0,)
    assert roles.content == tuple(range(1, len(sd3.pipe.tokenizer("a dog").input_ids) - 1))
    assert roles.others == tuple(range(1, 77 + TEXT_LEN))


def test_torch_sdpa_is_never_replaced_and_no_mode_outlives_a_run(sd3_pipe):
    """Attention interception is scoped to the hooked attention modules: torch's function stays the same object,
    during a run (seen from an unhooked module) and after it returns or raises."""
    from torch.overrides import _get_current_function_mode_stack

    original = torch.nn.functional.scaled_dot_product_attention
    seen = []
    handle = sd3_pipe.transformer.transformer_blocks[3].attn.register_forward_hook(
        lambda *a: seen.append((torch.nn.functional.scaled_dot_product_attention, _get_current_function_mode_stack())))
    run = dict(steps=2, height=32, width=32, max_sequence_length=32, output_type="latent", progress=False)
    try:
        cslg.generate(sd3_pipe, "a mug", cslg.PAG(["1"], 2.0, 4.0), **run)
        assert seen and all(f is original and not modes for f, modes in seen)
        assert torch.nn.functional.scaled_dot_product_attention is original
        with pytest.raises(RuntimeError, match="stop"):
            cslg.generate(sd3_pipe, "a mug", cslg.SCFG(4.0), callback=lambda i, t, x: (_ for _ in ()).throw(
                RuntimeError("stop")), **run)
        assert torch.nn.functional.scaled_dot_product_attention is original
        assert not _get_current_function_mode_stack()
    finally:
        handle.remove()
    adapter = adapter_for(sd3_pipe)
    modules = [m for _, block, bl in adapter.blocks for m, _ in adapter.attention_calls(block, bl)]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in modules)  # ours are gone, the test's too
