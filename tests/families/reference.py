"""Independent references for a family's tests: diffusers' own transformer forward with chosen blocks replaced by
identities (torch forward hooks that return the block's inputs in the output order read from diffusers' source),
the image tokens after every block of that forward, and a run of every baseline method."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from cslg.families import adapter_for
from cslg.guidance.executor import Executor
from cslg.guidance.sampling import prepare, sample
from cslg.methods import APG, CFG, CSLG, PAG, SCFG, CFGZeroStar, ConceptDiffusion, Request, SkippedNegativeSLG, Step

# the block's inputs (args, kwargs of its call in diffusers' forward) as its outputs, in its own order
Identity = Callable[[tuple, dict], Any]


@contextmanager
def identity_blocks(blocks: Sequence[tuple[nn.Module, Identity]]) -> Iterator[None]:
    """While held, every block of ``blocks`` returns ``identity(args, kwargs)`` of its call (computed, then
    discarded)."""
    handles = [block.register_forward_hook(lambda m, args, kwargs, out, f=f: f(args, kwargs), with_kwargs=True)
               for block, f in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def image_tokens(blocks: Sequence[tuple[nn.Module, Callable[[Any], torch.Tensor]]], out: list) -> Iterator[None]:
    """While held, ``out`` collects ``take(output)`` (the image tokens) of every call of each block of ``blocks``."""
    handles = [block.register_forward_hook(lambda m, args, output, take=take: out.append(take(output)))
               for block, take in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def cslg_step(pipe, prompt: str, negative: str, layers: Sequence[str], seed: int, steps: int, size: int, msl: int,
              cfg_scale: float = 4.0, scale: float = 2.0):
    """Our CSLG prediction at step 1 and the prepared run it came from."""
    adapter = adapter_for(pipe)
    run = prepare(adapter, {"uncond": negative, "cond": prompt}, seed, steps, size, size, msl)
    t = run.timesteps[1]
    method = CSLG(tuple(layers), scale, cfg_scale=cfg_scale)
    step = Step(1, steps, layout=adapter.layout(run.latents, run.extras))
    preds = Executor(adapter).predict(run.latents, t, run.cond, run.conditions, method.passes(step), run.extras)
    return method.combine(preds, step), run, t


def baselines(layers: Sequence[str]) -> list:
    """Every baseline, with ``layers`` for those that perturb blocks."""
    return [SCFG(4.0), ConceptDiffusion(4.0, 4.0), APG(4.0), CFGZeroStar(4.0), PAG(tuple(layers), 3.0, cfg_scale=4.0),
            SkippedNegativeSLG(tuple(layers), 4.0)]


def check_baselines_run_and_guide(pipe, prompt: str, negative: str, layers: Sequence[str], seed: int, steps: int,
                                  size: int, msl: int, differs: float = 1 / 255) -> None:
    """Each baseline gives a finite image that differs from the CFG image by more than ``differs``."""
    cfg = sample(adapter_for(pipe), CFG(4.0), Request(prompt, negative), seed, steps, size, size, msl, output_type="np")
    for method in baselines(layers):
        image = sample(adapter_for(pipe), method, Request(prompt, negative), seed, steps, size, size, msl,
                       output_type="np")
        assert np.isfinite(image).all(), method.name
        assert np.abs(image - cfg).max() > differs, f"{method.name} gave the CFG image"


def check_build_is_deterministic_and_seeded(preset: str) -> None:
    """Two builds of ``preset`` have equal weights; another seed gives other transformer weights."""
    from cslg.families import build_tiny

    def modules(pipe):
        return {k: v for k, v in pipe.components.items() if isinstance(v, nn.Module)}

    a, b, other = build_tiny(preset), build_tiny(preset), build_tiny(preset, seed=1)
    for key, module in modules(a).items():
        sa, sb = module.state_dict(), modules(b)[key].state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), f"{preset}: {key}"
    assert not torch.equal(a.transformer.proj_out.weight, other.transformer.proj_out.weight)
