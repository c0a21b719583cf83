"""Tests for cslg.scfg: the S-CFG formulas, the token-grid layouts and end-to-end runs on tiny models."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from cslg.denoiser import make_denoiser
from cslg.guidance import CFG, Request, cfg
from cslg.models import load_pipeline
from cslg.sampling import generate
from cslg.scfg import (
    SCALE_CAP,
    SCALE_MAX,
    SCALE_MIN,
    SCFG,
    TokenGrid,
    complete,
    default_layers,
    foreground_mask,
    guide,
    region_masks,
    scale_map,
    smooth,
)

REQUEST = Request("a red book and a gold clock")
RUN = dict(seed=0, steps=3, height=32, width=32, max_sequence_length=16, output_type="pt")

SD3_GRID, FLUX_GRID = TokenGrid(4, 6, 2), TokenGrid(4, 6, None)


def velocity(grid: TokenGrid, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, grid.h * grid.w, 16) if grid.patch is None else (1, 4, grid.h * 2, grid.w * 2)
    return torch.randn(shape, generator=g)


@pytest.mark.parametrize("grid", [SD3_GRID, FLUX_GRID], ids=["sd3", "flux"])
def test_constant_scale_map_is_cfg(grid):
    u, c = velocity(grid, 0), velocity(grid, 1)
    rho = grid.to_velocity(torch.ones(1, grid.h, grid.w))
    assert torch.equal(guide(u, c, 7.5, rho), cfg(u, c, 7.5))


@pytest.mark.parametrize("grid", [SD3_GRID, FLUX_GRID], ids=["sd3", "flux"])
def test_token_grid_layouts(grid):
    """A token map put into the velocity layout is constant on each token, and token norms read it back."""
    rho = torch.arange(grid.h * grid.w, dtype=torch.float32).reshape(1, grid.h, grid.w)
    x = grid.to_velocity(rho) * torch.ones_like(velocity(grid, 0))
    values_per_token = x[0].numel() / (grid.h * grid.w)
    torch.testing.assert_close(grid.token_norms(x), rho * values_per_token**0.5)
    if grid.patch is not None:  # token (i, j) is the latent patch [2i:2i+2, 2j:2j+2]
        assert torch.all(x[0, :, 2:4, 4:6] == rho[0, 1, 2])


def test_flux_grid_from_image_ids():
    denoiser = make_denoiser(load_pipeline("tiny-flux", device="cpu"))
    latents = denoiser.initial_noise(0, 32, 64)  # latent 16x32 -> 8x16 packed tokens
    packed = FluxPipeline._pack_latents(torch.arange(16 * 32.0).reshape(1, 1, 16, 32).repeat(1, 4, 1, 1), 1, 4, 16, 32)
    grid = TokenGrid.of(denoiser, latents)
    assert (grid.h, grid.w, grid.patch) == (8, 16, None)
    # row-major tokens: token (i, j) holds latent pixels (2i..2i+1, 2j..2j+1) of the ramp 32 y + x
    means = packed[0].mean(-1).reshape(grid.h, grid.w)
    i, j = torch.meshgrid(torch.arange(grid.h), torch.arange(grid.w), indexing="ij")
    assert torch.equal(means, (2 * i + 0.5) * 32 + 2 * j + 0.5)


def test_completion_formulas():
    torch.manual_seed(0)
    s = torch.rand(6, 6).softmax(-1)
    c = torch.rand(6, 3)
    paper = sum(torch.linalg.matrix_power(s, r) @ c for r in range(1, 5)) / 4
    code = (s + 3 * s @ s) @ c / 4
    torch.testing.assert_close(complete(c, s, "paper"), paper)
    torch.testing.assert_close(complete(c, s, "code"), code)
    with pytest.raises(ValueError, match="completion"):
        complete(c, s, "other")


def test_masks_partition_the_tokens():
    torch.manual_seed(0)
    maps = torch.rand(5, 7, 9)
    maps[3] = maps[1]  # ties go to one region only
    masks = region_masks(maps)
    assert set(masks.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(masks.sum(0), torch.ones(7, 9))


@pytest.mark.parametrize("w", [2.0, 7.5, 12.0])
def test_scale_map_finite_and_clamped(w):
    torch.manual_seed(0)
    maps = torch.rand(4, 8, 8)
    masks = region_masks(maps)
    fg = foreground_mask(maps[0], maps[1:].sum(0))
    eta = torch.rand(8, 8) * torch.tensor([0.01, 10.0]).repeat(4)[None]  # very uneven norms: clamps bite
    for foreground in (fg, torch.zeros_like(fg), torch.ones_like(fg)):
        rho = scale_map(eta, masks, foreground, w)
        assert torch.isfinite(rho).all()
        assert rho.min() >= min(SCALE_MIN, SCALE_CAP / w) - 1e-6
        assert rho.max() <= min(SCALE_MAX, SCALE_CAP / w) + 1e-6


def test_smooth_keeps_constants():
    torch.testing.assert_close(smooth(torch.full((2, 5, 5), 3.0)), torch.full((2, 5, 5), 3.0))


@pytest.mark.parametrize("preset", ["tiny-flux", "tiny-sd3"])
def test_scfg_end_to_end(preset):
    denoiser = make_denoiser(load_pipeline(preset, device="cpu"))
    processors = [block.attn.processor for _, block in denoiser.blocks]
    reference = generate(denoiser, CFG(7.5), REQUEST, **RUN)
    for method in (SCFG(7.5), SCFG(7.5, layers=("1", "4"), completion="code", foreground_from="uncond")):
        image = generate(denoiser, method, REQUEST, **RUN)
        assert torch.isfinite(image).all()
        assert (image - reference).abs().max() > 1e-3
    assert [block.attn.processor for _, block in denoiser.blocks] == processors


def test_scfg_settings():
    assert default_layers(load_pipeline("tiny-sd3", device="cpu").transformer) == ["2", "3"]
    params = SCFG(5.0, layers=("3",), completion="code", foreground_from="uncond").params()
    assert params["cfg_scale"] == 5.0 and params["layers"] == ["3"]
    assert params["completion"] == "code" and params["foreground_from"] == "uncond"
    assert params["scale_clamp"] == [SCALE_MIN, SCALE_MAX] and params["scale_cap"] == SCALE_CAP
    with pytest.raises(ValueError, match="foreground_from"):
        SCFG(foreground_from="both")
    with pytest.raises(RuntimeError, match="context"):
        SCFG().combine(torch.zeros(2, 4, 8, 8), 0, 1)
