"""Layer names and block skipping."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import pytest
import torch
from diffusers.hooks import HookRegistry, ModelHook

import cslg
from cslg.families import adapter_for
from cslg.families.base import LayerError
from cslg.guidance.skip import skip_blocks
from cslg.layers import canonical_layers

from ..helpers import tiny


def _sd3_inputs(pipe, batch=2):
    g = torch.Generator("cpu").manual_seed(0)
    tr = pipe.transformer
    return dict(
        hidden_states=torch.randn(batch, tr.config.in_channels, 16, 16, generator=g),
        encoder_hidden_states=torch.randn(batch, 7, tr.config.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, tr.config.pooled_projection_dim, generator=g),
        timestep=torch.tensor([500.0] * batch),
        return_dict=False,
    )


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-sd35"])
@pytest.mark.parametrize("layers", [[2], [0, 3], [5], [1, 2, 4]])
def test_skip_equals_diffusers_skip_layers(name, layers):
    pipe = tiny(name)
    tr = pipe.transformer
    inputs = _sd3_inputs(pipe)
    with torch.no_grad():
        ref = tr(**inputs, skip_layers=layers)[0]
        with skip_blocks(pipe, layers) as names:
            ours = tr(**inputs)[0]
        plain = tr(**inputs)[0]
    assert names == [str(layer) for layer in layers]
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(plain, ref, atol=1e-4), "skipping changed nothing: the test could not fail"


def test_skip_restores_blocks_and_returns_inputs(flux_pipe):
    tr = flux_pipe.transformer
    block = tr.single_transformer_blocks[1]
    h, e = torch.randn(1, 4, tr.inner_dim), torch.randn(1, 3, tr.inner_dim)
    with skip_blocks(flux_pipe, ["s1", 0]) as names:
        assert names == ["s1", "0"]
        enc, hid = block(hidden_states=h, encoder_hidden_states=e, temb=None, image_rotary_emb=None)
        assert enc is e and hid is h
        assert "forward" in vars(tr.transformer_blocks[0]) and "forward" not in vars(tr.transformer_blocks[1])
    assert "forward" not in vars(block) and "forward" not in vars(tr.transformer_blocks[0])


def test_skip_restores_blocks_after_an_error(sd3_pipe):
    block = sd3_pipe.transformer.transformer_blocks[2]
    with pytest.raises(RuntimeError, match="boom"):
        with skip_blocks(sd3_pipe, ["2"]):
            assert "forward" in vars(block)
            raise RuntimeError("boom")
    assert "forward" not in vars(block)


def test_layer_names_and_errors(flux_pipe, sd3_pipe):
    flux, sd3 = adapter_for(flux_pipe), adapter_for(sd3_pipe)
    names = cslg.layer_names(flux_pipe)
    assert names[:2] == ["0", "1"] and names[-1] == "s5" and len(names) == 12
    assert flux.layer_names == names and [name for name, _, _ in flux.blocks] == names
    assert flux.blocks[6][1] is flux_pipe.transformer.single_transformer_blocks[0]
    assert cslg.layer_names(sd3_pipe) == [str(i) for i in range(6)]
    assert flux.resolve_layers([3, "S2", " s0"]) == ["3", "s2", "s0"]
    assert canonical_layers(["3,8", "s1 4"]) == ("3", "8", "s1", "4")
    assert canonical_layers("3,8 S12") == ("3", "8", "s12") and canonical_layers([5, "S2"]) == ("5", "s2")
    assert flux.valid_range() == "0-5 (double-stream blocks) and s0-s5 (single-stream blocks)"
    assert sd3.valid_range() == "0-5"
    assert flux.block_groups() == [("double-stream blocks", 0), ("single-stream blocks", 6)]
    assert sd3.block_groups() == [("joint blocks", 0)]
    assert cslg.LayerError is LayerError and issubclass(LayerError, ValueError)
    with pytest.raises(LayerError, match=r"0-5 \(double-stream blocks\) and s0-s5"):
        flux.resolve_layers(["s6"])
    with pytest.raises(LayerError, match="valid layers are 0-5"):
        sd3.resolve_layers([6])
    with pytest.raises(LayerError, match="valid layers are 0-5"):
        sd3.resolve_layers(["s0"])
    with pytest.raises(LayerError, match="twice"):
        sd3.resolve_layers([1, "1"])
    with pytest.raises(LayerError):
        with skip_blocks(sd3_pipe, ["x"]):
            pass
    assert not any("forward" in vars(b) for _, b, _ in sd3.blocks)


class CountingHook(ModelHook):
    """A user's diffusers hook: counts the calls of the block it is registered on."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def pre_forward(self, module, *args, **kwargs):
        self.calls += 1
        return args, kwargs


@contextmanager
def users_hooks(blocks) -> Iterator[tuple[CountingHook, CountingHook, list]]:
    """A user's diffusers hooks on blocks 0 and 2 and a torch pre-forward hook on block 2 (the calls it saw), removed
    afterwards."""
    kept, skipped = CountingHook(), CountingHook()
    HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(kept, "user")
    HookRegistry.check_if_exists_or_initialize(blocks[2]).register_hook(skipped, "user")
    torch_calls = []
    handle = blocks[2].register_forward_pre_hook(lambda m, a, kw: torch_calls.append(1), with_kwargs=True)
    try:
        yield kept, skipped, torch_calls
    finally:
        handle.remove()
        for block in (blocks[0], blocks[2]):
            block._diffusers_hook.remove_hook("user", recurse=False)
            del block._diffusers_hook
            vars(block).pop("forward", None)


def test_a_users_hooks_keep_working_during_and_after_skip_blocks_and_generate(sd3_pipe):
    blocks = sd3_pipe.transformer.transformer_blocks
    run = dict(num_inference_steps=2, height=32, width=32, max_sequence_length=32, output_type="latent")
    with users_hooks(blocks) as (kept, skipped, torch_calls):
        with skip_blocks(sd3_pipe, ["2"]):
            sd3_pipe("a mug", guidance_scale=1.0, **run)
            assert set(blocks[2]._diffusers_hook.hooks) == {"user", "cslg_skip_block"}
        assert kept.calls == 2 and skipped.calls == 0  # the skipped block's computation, its hooks included
        assert len(torch_calls) == 2  # torch's own hooks see the identity call
        sd3_pipe("a mug", guidance_scale=1.0, **run)
        assert kept.calls == 4 and skipped.calls == 2 and list(blocks[2]._diffusers_hook.hooks) == ["user"]
        cslg.generate(sd3_pipe, "a mug", cslg.CSLG(["2"], 1.0, 1.0), steps=2, height=32, width=32,
                      max_sequence_length=32, output_type="latent", progress=False)
        assert kept.calls == 6 and skipped.calls == 4  # the unskipped pass ran block 2 with its hook at both steps
        sd3_pipe("a mug", guidance_scale=1.0, **run)
        assert kept.calls == 8 and skipped.calls == 6


def test_skip_blocks_works_in_the_familys_other_pipelines(sd3_pipe):
    """The transformer is the same in SD3's img2img and PAG pipelines (and a bare transformer): skipping works there,
    equal to the transformer's own ``skip_layers``; an unknown pipeline is refused naming the supported ones."""
    from diffusers import StableDiffusion3Img2ImgPipeline, StableDiffusion3PAGPipeline

    inputs = _sd3_inputs(sd3_pipe)
    ref = sd3_pipe.transformer(**inputs, skip_layers=[2])[0]
    for pipe in (StableDiffusion3Img2ImgPipeline.from_pipe(sd3_pipe), StableDiffusion3PAGPipeline.from_pipe(sd3_pipe),
                 sd3_pipe.transformer):
        with skip_blocks(pipe, ["2"]):
            assert torch.equal(sd3_pipe.transformer(**inputs)[0], ref), type(pipe).__name__
    with pytest.raises(ValueError, match="unsupported transformer Linear: supported are .*SD3Transformer2DModel"):
        with skip_blocks(torch.nn.Linear(2, 2), ["0"]):
            pass
