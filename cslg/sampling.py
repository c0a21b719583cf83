"""The denoising loop, one for both model families: guidance methods plug in, the loop stays the same."""

from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

from .denoiser import Conditioning, Denoiser
from .guidance import GuidanceMethod, Request


@torch.no_grad()
def denoise(
    denoiser: Denoiser,
    method: GuidanceMethod,
    cond: Conditioning,
    latents: torch.Tensor,
    timesteps: torch.Tensor,
    on_step: Callable[[int, torch.Tensor], None] | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Run the flow-matching sampler from ``latents`` ([B, ...]) over ``timesteps``.

    At step ``i`` the method's passes are evaluated in one branched forward and combined into the
    velocity for each latent; the pipeline's scheduler takes the step. ``on_step(i, t)`` runs before
    each prediction (used by activation capture to know the step).
    """
    scheduler = denoiser.pipe.scheduler
    n = len(timesteps)
    with method.context(denoiser):
        for i, t in enumerate(tqdm(timesteps, desc=method.name, disable=not progress, leave=False)):
            if on_step is not None:
                on_step(i, t)
            preds = denoiser.predict(latents, t, cond, method.passes(i, n, len(cond)))
            velocity = method.combine(preds, i, n)
            latents = scheduler.step(velocity, t, latents, return_dict=False)[0]
    return latents


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    method: GuidanceMethod,
    request: Request,
    seed: int,
    steps: int,
    height: int,
    width: int,
    max_sequence_length: int,
    output_type: str = "pil",
    progress: bool = False,
):
    """One image for ``request`` from the noise of ``seed`` (the noise diffusers draws for that seed)."""
    cond = denoiser.encode(method.rows(request), max_sequence_length)
    latents = denoiser.initial_noise(seed, height, width)
    timesteps = denoiser.timesteps(steps, latents)
    latents = denoise(denoiser, method, cond, latents, timesteps, progress=progress)
    return denoiser.decode(latents, height, width, output_type)[0]
