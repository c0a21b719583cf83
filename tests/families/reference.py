"""Independent references for a family's tests: diffusers' own transformer forward with chosen blocks replaced by
identities (torch forward hooks that return the block's inputs in the output order read from diffusers' source),
the image tokens after every block of that forward, and a run of every baseline method."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn as nn

from cslg.capture import CaptureConfig, capture_pair
from cslg.families import adapter_for
from cslg.guidance.executor import Executor
from cslg.guidance.sampling import prepare, sample
from cslg.guidance.skip import skip_blocks
from cslg.methods import APG, CFG, CSLG, PAG, SCFG, CFGZeroStar, ConceptDiffusion, Request, SkippedNegativeSLG, Step
from cslg.prompts import PromptPair

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


def flux_like_identities(transformer: nn.Module, layers: Sequence[str]) -> list[tuple[nn.Module, Identity]]:
    """FLUX.2 and Chroma, from diffusers' source: double blocks return ``(encoder_hidden_states, hidden_states)``;
    single blocks are called with the joint ``[text, image]`` sequence as ``hidden_states`` and return it."""
    out = []
    for name in layers:
        if name.startswith("s"):
            out.append((transformer.single_transformer_blocks[int(name[1:])], lambda a, k: k["hidden_states"]))
        else:
            out.append((transformer.transformer_blocks[int(name)],
                        lambda a, k: (k["encoder_hidden_states"], k["hidden_states"])))
    return out


def flux_like_image_tokens(transformer: nn.Module, n_text: int) -> list[tuple[nn.Module, Callable]]:
    """FLUX.2 and Chroma: the image tokens of a double block's ``(text, image)`` and of a single block's
    ``[text, image]`` sequence."""
    return ([(b, lambda out: out[1]) for b in transformer.transformer_blocks]
            + [(b, lambda out: out[:, n_text:]) for b in transformer.single_transformer_blocks])


def capture_against_forwards(pipe, preset: str, pair: PromptPair, seed: int, size: int, msl: int, guidance: float,
                             forward: Callable, takes: Callable) -> torch.Tensor:
    """The capture's cosine at step 0 checked against separate diffusers forwards of the pair's two prompts
    (``forward(run, t, row)``), image tokens read by forward hooks (``takes(run)``: ``(block, take)`` pairs); returns
    the reference cosines."""
    adapter = adapter_for(pipe)
    config = CaptureConfig(model=preset, prompts_file="-", pairs=1, steps=2, seed=seed, height=size, width=size,
                           guidance=guidance, max_sequence_length=msl)
    cosine = capture_pair(adapter, pair, config)["cosine"][0]
    run = prepare(adapter, {"a": pair.negative, "b": pair.positive}, seed, 2, size, size, msl)
    outputs: list[list[torch.Tensor]] = [[], []]
    for row in (0, 1):
        with torch.no_grad(), image_tokens(takes(run), outputs[row]):
            forward(run, run.timesteps[0], row)
    expected = torch.stack([torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0)
                            for a, b in zip(*outputs, strict=True)])
    torch.testing.assert_close(cosine, expected, atol=1e-5, rtol=1e-5)
    return expected


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


def check_cslg_against_identities(pipe, prompt: str, negative: str, layers: Sequence[str], seed: int, steps: int,
                                  size: int, msl: int, forward: Callable,
                                  identities: Sequence[tuple[nn.Module, Identity]]):
    """Our CSLG step equals ``u + 4 (c - u) + 2 (c - c_skip)`` from diffusers' forward (``forward(run, t, row)``, row 0
    the negative prompt) with ``identities`` hooked for ``c_skip``; cslg's own ``skip_blocks`` in that forward gives the
    same ``c_skip``. Returns the prepared run."""
    ours, run, t = cslg_step(pipe, prompt, negative, layers, seed, steps, size, msl)
    with torch.no_grad():
        u, c = forward(run, t, 0), forward(run, t, 1)
        with identity_blocks(identities):
            c_skip = forward(run, t, 1)
        with skip_blocks(pipe, layers):
            assert torch.allclose(forward(run, t, 1), c_skip, atol=1e-6)
    torch.testing.assert_close(ours, u + 4.0 * (c - u) + 2.0 * (c - c_skip), atol=1e-5, rtol=1e-4)
    assert (c - c_skip).abs().max() > 1e-3, "skipping changed nothing: the test could not fail"
    return run


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
