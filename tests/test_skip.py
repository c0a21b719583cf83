"""Layer names and block skipping."""

from __future__ import annotations

import pytest
import torch

from cslg.layers import LayerError, layer_names, parse_layer_list, resolve_layers
from cslg.skip import skip_blocks

from .conftest import tiny


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
    tr = tiny(name).transformer
    inputs = _sd3_inputs(tiny(name))
    with torch.no_grad():
        ref = tr(**inputs, skip_layers=layers)[0]
        with skip_blocks(tr, layers):
            ours = tr(**inputs)[0]
        plain = tr(**inputs)[0]
    assert torch.allclose(ours, ref, atol=1e-6)
    assert not torch.allclose(plain, ref, atol=1e-4), "skipping changed nothing: the test could not fail"


def test_skip_restores_blocks_and_returns_inputs(flux_pipe):
    tr = flux_pipe.transformer
    block = tr.single_transformer_blocks[1]
    h, e = torch.randn(1, 4, tr.inner_dim), torch.randn(1, 3, tr.inner_dim)
    with skip_blocks(tr, ["s1", 0]):
        enc, hid = block(hidden_states=h, encoder_hidden_states=e, temb=None, image_rotary_emb=None)
        assert enc is e and hid is h
    assert "forward" not in vars(block)


def test_layer_names_and_errors(flux_pipe, sd3_pipe):
    assert layer_names(flux_pipe.transformer)[:2] == ["0", "1"] and layer_names(flux_pipe.transformer)[-1] == "s5"
    assert resolve_layers(flux_pipe.transformer, [3, "S2", " s0"]) == ["3", "s2", "s0"]
    assert parse_layer_list(["3,8", "s1 4"]) == ["3", "8", "s1", "4"]
    with pytest.raises(LayerError, match=r"0-5 \(double-stream blocks\) and s0-s5"):
        resolve_layers(flux_pipe.transformer, ["s6"])
    with pytest.raises(LayerError, match="valid layers are 0-5"):
        resolve_layers(sd3_pipe.transformer, [6])
    with pytest.raises(LayerError, match="valid layers are 0-5"):
        resolve_layers(sd3_pipe.transformer, ["s0"])
    with pytest.raises(LayerError, match="twice"):
        resolve_layers(sd3_pipe.transformer, [1, "1"])
    with pytest.raises(LayerError):
        with skip_blocks(sd3_pipe.transformer, ["x"]):
            pass
