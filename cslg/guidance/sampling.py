"""The denoising loop, one for every family and method: the adapter supplies the family, the method its
passes and formula; the pipeline's own encoding, noise, scheduler and VAE are used."""

from __future__ import annotations

import warnings
from contextlib import nullcontext
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence, Union

import torch
from tqdm.auto import tqdm

from ..families.base import Adapter
from ..families.layout import Conditioning
from ..methods.base import Method, Request, Step
from .batch import batched
from .executor import BlockObserver, Executor

# "seed S" is the noise diffusers draws for ``torch.Generator("cpu").manual_seed(S)``; a generator is drawn from as is
Seed = Union[int, torch.Generator]

# ``callback(step index, timestep, latents)`` after each scheduler step; may return new latents (or None).
StepCallback = Callable[[int, torch.Tensor, torch.Tensor], "torch.Tensor | None"]


class DegenerateMethodWarning(UserWarning):
    """A method whose settings make it equal to another method (an empty step window, a zero scale, ...)."""


class UnusedCompileWarning(UserWarning):
    """The transformer was compiled as a whole; the executor calls its blocks, so that compilation is never used."""


def check_transformer(adapter: Adapter) -> None:
    """Refuse what cannot work with the executor and say what is not used: diffusers' cache hooks cache per call of
    the denoiser, and the executor runs several passes (of different lanes) in one call; a compiled whole forward is
    never called (the blocks are), while regional compilation of the blocks is used."""
    transformer = adapter.transformer
    if getattr(transformer, "is_cache_enabled", False):
        cache = type(transformer._cache_config).__name__
        raise ValueError(f"{type(transformer).__name__} has a diffusers cache enabled ({cache}); its hooks cache per "
                         "denoiser call and cslg runs several passes in one call: disable it "
                         "(pipe.transformer.disable_cache()) to guide with cslg")
    if getattr(transformer, "_compiled_call_impl", None) is not None or hasattr(transformer, "_orig_mod"):
        warnings.warn("the transformer is compiled as a whole, but cslg calls its blocks one by one, so that compiled "
                      "forward is not used: compile the blocks instead (pipe.transformer.compile_repeated_blocks(), "
                      "diffusers' regional compilation)", UnusedCompileWarning, stacklevel=4)


@dataclass
class Prepared:
    """Everything a sampling run needs besides the method: encoded conditionings, noise, timesteps, per-image
    extras."""

    conditions: list[str]
    cond: Conditioning
    latents: torch.Tensor
    timesteps: torch.Tensor
    extras: dict[str, Any]
    texts: dict[str, str]


def prepare(adapter: Adapter, conditions: dict[str, str], seed: Seed | Sequence[Seed], steps: int, height: int,
            width: int, max_sequence_length: int, latents: torch.Tensor | None = None, image: torch.Tensor | None = None,
            strength: float = 1.0) -> Prepared:
    """Encode ``conditions`` (name -> prompt), draw the noise of ``seed`` (one per image of a batch) and the
    timesteps. ``latents``: initial latents to start from instead (in the pipeline's layout). ``image``:
    image-to-image from these preprocessed pixels (one per image), starting at the timestep ``strength`` keeps."""
    adapter.check_settings(height, width, max_sequence_length)
    names = list(conditions)
    cond = adapter.encode([conditions[n] for n in names], max_sequence_length)
    seeds = list(seed) if isinstance(seed, (list, tuple)) else [seed]
    # image-to-image draws its noise in ``image_start``; here only the shape and the extras (a generator stays unused)
    noise = [adapter.initial_noise(s if image is None else 0, height, width) for s in seeds]
    extras = noise[0][1]
    if latents is None:
        latents = torch.cat([x for x, _ in noise])
    else:
        latents = latents.to(noise[0][0].device, noise[0][0].dtype)
    timesteps = adapter.timesteps(steps, latents)
    if image is not None:
        latents, timesteps = adapter.image_start(image, seeds, timesteps, strength, height, width)
    return Prepared(names, cond, latents, timesteps, extras, dict(conditions))


@torch.no_grad()
def denoise(
    adapter: Adapter,
    method: Method,
    run: Prepared,
    latents: torch.Tensor | None = None,
    observe: Callable[[int], BlockObserver | None] | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    predictions: Callable[[int, dict[str, torch.Tensor]], None] | None = None,
    max_lanes: int | None = None,
) -> torch.Tensor:
    """Run the sampler from ``latents`` (default: ``run.latents``) over ``run.timesteps``.

    At step ``i`` the method's passes run in one branched forward (``max_lanes``: at most that many passes per
    forward) and are combined into one prediction per latent; the pipeline's scheduler takes the step.
    ``observe(i)`` may return a block observer for step ``i``; ``predictions(i, preds)`` sees every pass's
    prediction of step ``i``; ``callback(i, t, latents)`` runs after the step and may return latents to continue
    from.
    """
    check_transformer(adapter)
    method = method.bind(adapter)
    scheduler = adapter.pipe.scheduler
    executor = Executor(adapter, max_lanes)
    latents = run.latents if latents is None else latents
    n = len(run.timesteps)
    layout = adapter.layout(latents, run.extras)
    recorded = method.recorded_attention(adapter)
    sink = method.attention_sink() if recorded else None
    roles = {}
    if recorded:
        text_len = run.cond.embeds.shape[1]
        roles = {name: adapter.text_roles(run.texts[name], text_len) for name in run.conditions}
    sigmas = getattr(scheduler, "sigmas", None)
    memory: dict[str, Any] = {}
    with executor.attention(recorded[0]) if recorded else nullcontext():
        for i, t in enumerate(tqdm(run.timesteps, desc=method.name, disable=not progress, leave=False)):
            sigma = float(sigmas[i]) if sigmas is not None and i < len(sigmas) else None
            step = Step(i, n, float(t), sigma, tuple(run.conditions), layout, memory, roles=roles,
                        postprocess_cfg=adapter.cfg_postprocessor(float(t)))
            preds = executor.predict(
                latents, t, run.cond, run.conditions, method.passes(step), run.extras, attention_kwargs,
                record=(recorded[0], recorded[1], sink) if recorded else None,
                observe=observe(i) if observe else None,
            )
            if predictions is not None:
                predictions(i, preds)
            if sink is not None:
                step = replace(step, attention=sink.take())
            latents = scheduler.step(method.combine(preds, step), t, latents, return_dict=False)[0]
            if callback is not None and (changed := callback(i, t, latents)) is not None:
                latents = changed
    return latents


@torch.no_grad()
def sample_batch(
    adapter: Adapter,
    method: Method,
    requests: Sequence[Request],
    seeds: Sequence[Seed],
    steps: int,
    height: int,
    width: int,
    max_sequence_length: int,
    output_type: str = "pil",
    attention_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
    callback: StepCallback | None = None,
    latents: torch.Tensor | None = None,
    image: torch.Tensor | None = None,
    strength: float = 1.0,
):
    """One image per request, image ``j`` from the noise of ``seeds[j]`` (the noise diffusers draws for that seed or
    from that generator), all in one batched forward per step. Returns what the pipeline's image processor returns
    for the batch (``pil``: a list of images; ``np``: an array ``[N, H, W, 3]``), or the final latents
    (``output_type="latent"``, not decoded, as diffusers' pipelines return them). ``image``/``strength``:
    image-to-image (``prepare``)."""
    if len(seeds) != len(requests):
        raise ValueError(f"{len(seeds)} seeds for {len(requests)} images")
    method = method.bind(adapter)
    many = batched(method, requests)
    run = prepare(adapter, many.conditions(requests[0]), seeds, steps, height, width, max_sequence_length, latents,
                  image, strength)
    if reason := method.degenerate(len(run.timesteps), method.conditions(requests[0])):
        warnings.warn(f"{method.name}: {reason}", DegenerateMethodWarning, stacklevel=3)
    latents = denoise(adapter, many, run, attention_kwargs=attention_kwargs, progress=progress, callback=callback)
    if output_type == "latent":
        return latents
    return adapter.decode(latents, height, width, output_type)


def sample(adapter: Adapter, method: Method, request: Request, seed: Seed, steps: int, height: int, width: int,
           max_sequence_length: int, output_type: str = "pil", **kwargs: Any):
    """One image for ``request`` from the noise of ``seed`` (``sample_batch`` of one)."""
    return sample_batch(adapter, method, [request], [seed], steps, height, width, max_sequence_length, output_type,
                        **kwargs)[0]


def compile_blocks(pipe_or_adapter: Any, **compile_kwargs: Any) -> int:
    """Regional compilation for the executor: ``torch.compile`` every block of the transformer's block lists (what
    diffusers' ``compile_repeated_blocks`` does for the families that declare their repeated blocks, for every
    family). ``compile_kwargs`` go to ``torch.compile`` (e.g. ``mode="max-autotune"``, ``fullgraph=True``). Blocks
    whose attention a method perturbs or records run uncompiled. Returns how many blocks were compiled."""
    from ..families import adapter_for
    from ..families.base import Adapter

    adapter = pipe_or_adapter if isinstance(pipe_or_adapter, Adapter) else adapter_for(pipe_or_adapter)
    for _, block, _ in adapter.blocks:
        block.compile(**compile_kwargs)
    return len(adapter.blocks)
