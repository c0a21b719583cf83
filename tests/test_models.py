"""Tiny presets and pipeline loading."""

from __future__ import annotations

import pytest
import torch

from cslg.families import adapter_for, family_of
from cslg.models import load_pipeline
from cslg.families import build_tiny

from .helpers import tiny


@pytest.mark.parametrize("name,family,double,single", [
    ("tiny-flux", "flux", 6, 6), ("tiny-sd3", "sd3", 6, 0), ("tiny-sd35", "sd3", 6, 0),
])
def test_presets_are_real_classes_in_eval_mode(name, family, double, single):
    pipe = tiny(name)
    assert family_of(pipe) == family and adapter_for(pipe).name == family
    assert len(adapter_for(pipe).blocks) == double + single
    assert len(pipe.transformer.transformer_blocks) == double
    assert len(getattr(pipe.transformer, "single_transformer_blocks", [])) == single
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            assert not component.training, f"{name}: {type(component).__name__} is in train mode"


def test_sd35_has_dual_attention_layers():
    blocks = tiny("tiny-sd35").transformer.transformer_blocks
    assert any(b.use_dual_attention for b in blocks) and not all(b.use_dual_attention for b in blocks)


def test_presets_are_deterministic():
    a, b = build_tiny("tiny-flux"), build_tiny("tiny-flux")
    for (ka, va), (kb, vb) in zip(a.transformer.state_dict().items(), b.transformer.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert torch.equal(a.text_encoder_2.shared.weight, b.text_encoder_2.shared.weight)


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd35"])
def test_save_pretrained_round_trip(name, tmp_path):
    pipe = tiny(name)
    pipe.save_pretrained(tmp_path / name)
    loaded = load_pipeline(str(tmp_path / name), device="cpu")
    assert type(loaded) is type(pipe)
    kw = dict(prompt="a sign that says 'hi'", num_inference_steps=2, height=32, width=32, output_type="np",
              max_sequence_length=32)
    ref = pipe(generator=torch.Generator("cpu").manual_seed(1), **kw).images
    out = loaded(generator=torch.Generator("cpu").manual_seed(1), **kw).images
    assert abs(ref - out).max() < 1e-5
    assert loaded.tokenizer("a sign").input_ids == pipe.tokenizer("a sign").input_ids


def test_load_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown tiny preset"):
        load_pipeline("tiny-unet", device="cpu")
    with pytest.raises(FileNotFoundError, match="model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match=r"is a StableDiffusion3Pipeline \(sd3\), but this script runs flux models"):
        load_pipeline("tiny-sd3", family="flux", device="cpu")
    with pytest.raises(ValueError, match="--offload"):
        load_pipeline("tiny-sd3", device="cpu", offload="disk")
    with pytest.raises(ValueError, match="unsupported pipeline object: supported are .*FluxPipeline"):
        family_of(object())
