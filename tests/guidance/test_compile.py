"""Compilation and diffusers' caches with the executor: compiled blocks are used and give the same images; a
compiled whole forward is not used and says so; a cache hook is refused in one line."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from diffusers.hooks import FirstBlockCacheConfig

import cslg
from cslg.families import build_tiny
from cslg.guidance.sampling import UnusedCompileWarning

RUN = dict(steps=2, height=32, width=32, max_sequence_length=32, output_type="latent", progress=False)
METHODS = (cslg.CFG(4.0), cslg.CSLG(["2"], 2.0, 4.0), cslg.PAG(["1"], 2.0, 4.0), cslg.SCFG(4.0))


def _fresh(name):
    pipe = build_tiny(name).to("cpu")
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("name", ["tiny-sd3", "tiny-flux"])
def test_compiled_blocks_are_used_and_give_the_same_images(name):
    pipe = _fresh(name)
    plain = {m.name: cslg.generate(pipe, "a mug", m, **RUN).images for m in METHODS}
    if name == "tiny-flux":  # diffusers' regional compilation, for the families that declare their repeated blocks
        pipe.transformer.compile_repeated_blocks(backend="eager")
    else:
        assert cslg.compile_blocks(pipe, backend="eager") == 6
    torch._dynamo.utils.counters.clear()
    for method in METHODS:  # perturbed and recording blocks run uncompiled, the rest compiled
        assert torch.equal(cslg.generate(pipe, "a mug", method, **RUN).images, plain[method.name]), method.name
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] > 0
    assert not torch._dynamo.utils.counters["graph_break"]


def test_a_compiled_whole_forward_is_not_used_and_says_so():
    pipe = _fresh("tiny-sd3")
    pipe.transformer.compile(backend="eager")
    with pytest.warns(UnusedCompileWarning, match="compile_repeated_blocks"):
        cslg.generate(pipe, "a mug", cslg.CFG(4.0), **RUN)


def test_diffusers_caches_are_refused_in_one_line():
    pipe = _fresh("tiny-flux")
    pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.2))
    with pytest.raises(ValueError, match=r"cache enabled \(FirstBlockCacheConfig\).*disable_cache\(\)"):
        cslg.generate(pipe, "a mug", cslg.CFG(4.0), **RUN)
    pipe.transformer.disable_cache()
    assert cslg.generate(pipe, "a mug", cslg.CFG(4.0), **RUN).images.shape[0] == 1
