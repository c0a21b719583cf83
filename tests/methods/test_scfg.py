"""Tests for cslg.methods.scfg: the S-CFG formulas, the token layouts and end-to-end runs on tiny models."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import FluxPipeline

from cslg.guidance.attention import AttentionMaps
from cslg.families import adapter_for
from cslg.families.layout import LatentLayout, TextRoles
from cslg.methods import CFG, Request, Step, cfg
from cslg.methods.scfg import (
    SCALE_CAP,
    SCALE_MAX,
    SCALE_MIN,
    SCFG,
    complete,
    foreground_mask,
    guide,
    region_masks,
    role_maps,
    scale_map,
    scfg_prediction,
    smooth,
)
from cslg.guidance.sampling import sample

from ..helpers import tiny

REQUEST = Request("a red book and a gold clock")
RUN = dict(seed=0, steps=3, height=32, width=32, max_sequence_length=16, output_type="pt")

SD3_LAYOUT, FLUX_LAYOUT = LatentLayout(4, 6, patch=2), LatentLayout(4, 6, packed=4)
LAYOUTS = pytest.mark.parametrize("layout", [SD3_LAYOUT, FLUX_LAYOUT], ids=["sd3", "flux"])


def velocity(layout: LatentLayout, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (1, layout.h * layout.w, 16) if layout.packed else (1, 4, layout.h * 2, layout.w * 2)
    return torch.randn(shape, generator=g)


@LAYOUTS
def test_constant_scale_map_is_cfg(layout):
    u, c = velocity(layout, 0), velocity(layout, 1)
    rho = layout.to_prediction(torch.ones(1, layout.h, layout.w))
    assert torch.equal(guide(u, c, 7.5, rho), cfg(u, c, 7.5))


@LAYOUTS
def test_token_layouts(layout):
    """A token map put into the prediction layout is constant on each token, and token norms read it back."""
    rho = torch.arange(layout.h * layout.w, dtype=torch.float32).reshape(1, layout.h, layout.w)
    x = layout.to_prediction(rho) * torch.ones_like(velocity(layout, 0))
    values_per_token = x[0].numel() / (layout.h * layout.w)
    torch.testing.assert_close(layout.token_norms(x), rho * values_per_token**0.5)
    if layout.patch is not None:  # token (i, j) is the latent patch [2i:2i+2, 2j:2j+2]
        assert torch.all(x[0, :, 2:4, 4:6] == rho[0, 1, 2])
    else:  # token (i, j) is row i * w + j
        assert torch.all(x[0, 1 * layout.w + 2] == rho[0, 1, 2])


def test_flux_layout_from_image_ids():
    adapter = adapter_for(tiny("tiny-flux"))
    latents, extras = adapter.initial_noise(0, 32, 64)  # latent 16x32 -> 8x16 packed tokens
    packed = FluxPipeline._pack_latents(torch.arange(16 * 32.0).reshape(1, 1, 16, 32).repeat(1, 4, 1, 1), 1, 4, 16, 32)
    layout = adapter.layout(latents, extras)
    assert (layout.h, layout.w, layout.patch, layout.packed) == (8, 16, None, 4)
    # row-major tokens: token (i, j) holds latent pixels (2i..2i+1, 2j..2j+1) of the ramp 32 y + x
    means = packed[0].mean(-1).reshape(layout.h, layout.w)
    i, j = torch.meshgrid(torch.arange(layout.h), torch.arange(layout.w), indexing="ij")
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


def test_regions_and_foreground_by_hand():
    """Both decisions compare spatially normalised maps (each map divided by its sum)."""
    background = torch.tensor([[4.0, 1.0, 1.0], [2.0, 1.0, 1.0]])  # sum 10
    others = torch.tensor([[2.0, 4.0, 6.0], [3.0, 1.0, 4.0]])  # sum 20; raw, others would beat background at (1, 0)
    assert torch.equal(foreground_mask(background, others), torch.tensor([[False, True, True], [False, False, True]]))
    token = torch.tensor([[0.0, 3.0, 1.0], [0.0, 0.0, 1.0]])  # sum 5: 0.6 at (0, 1), 0.2 at (0, 2) and (1, 2)
    masks = region_masks(torch.stack([background, token]))
    assert torch.equal(masks[1], torch.tensor([[0.0, 1.0, 1.0], [0.0, 0.0, 1.0]]))
    assert torch.equal(masks[0], 1 - masks[1])


def _smooth_columns(a: float, b: float) -> list[float]:
    """Hand smoothing of the 2x3 map with columns ``[a, b, b]``: 3x3 Gaussian with σ 0.5 (weights ``e^-2, 1,
    e^-2`` per axis, normalised), reflect padding: rows are equal, so only the columns mix; the padded row is
    ``b a b b b``."""
    e = math.exp(-1 / (2 * 0.5**2))
    return [(a + 2 * e * b) / (1 + 2 * e), (e * a + (1 + e) * b) / (1 + 2 * e), b]


@pytest.mark.parametrize(
    "foreground,w,rho",
    [
        # N_A = 1 (column 0), N_B = (2 + 3 + 1 + 2) / 4 = 2, N_fg = (2 + 3 + 2) / 3 = 7/3: ρ = N_fg / N_i
        ([[False, True, True], [False, False, True]], 5.0, (7 / 3, 7 / 6)),
        # the cap 15/w = 1.5 bites on region A
        ([[False, True, True], [False, False, True]], 10.0, (1.5, 7 / 6)),
        # N_fg = 1: ρ_A = 1, ρ_B = 1/2 is clamped up to 0.8
        ([[False, False, False], [True, False, False]], 5.0, (1.0, SCALE_MIN)),
    ],
)
def test_scale_map_by_hand(foreground, w, rho):
    eta = torch.tensor([[1.0, 2.0, 3.0], [1.0, 1.0, 2.0]])
    masks = torch.zeros(2, 2, 3)
    masks[0, :, 0] = 1.0  # region A: column 0
    masks[1, :, 1:] = 1.0  # region B: columns 1 and 2
    expected = torch.tensor([_smooth_columns(*rho)] * 2)
    torch.testing.assert_close(scale_map(eta, masks, torch.tensor(foreground), w), expected, rtol=1e-5, atol=1e-6)


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


def uniform_attention(layout: LatentLayout, roles: TextRoles) -> AttentionMaps:
    """Every image token attends all image tokens alike and the prompt's tokens alike; the background token gets
    no attention (so the foreground, where the prompt's maps beat the background's, is the whole grid: when the
    background is attended alike too, the spatially normalised maps tie exactly and float rounding decides)."""
    n = layout.h * layout.w
    cross = torch.zeros(n, roles.text_len)
    cross[:, list(roles.others)] = 1.0 / len(roles.others)
    return AttentionMaps(cross, torch.full((n, n), 1.0 / n))


@LAYOUTS
@pytest.mark.parametrize("completion", ["paper", "code"])
def test_uniform_attention_is_cfg(layout, completion):
    """Uniform maps carry no spatial information: one region, foreground everywhere, ρ = 1, S-CFG = CFG."""
    roles = TextRoles(content=(1, 2, 3), background=(0,), text_len=7)
    maps = uniform_attention(layout, roles)
    u, c = velocity(layout, 0), velocity(layout, 1)
    role = role_maps(maps.cross, maps.self_attn, roles, layout, completion)
    assert role.shape == (2 + 3, layout.h, layout.w)
    torch.testing.assert_close(scfg_prediction(u, c, 7.5, role, role, layout), cfg(u, c, 7.5), rtol=1e-5, atol=1e-5)
    step = Step(0, 1, layout=layout, attention={"cond": maps, "uncond": maps}, roles={"cond": roles, "uncond": roles})
    for method in (SCFG(7.5, completion=completion), SCFG(7.5, completion=completion, foreground_from="uncond")):
        v = method.combine({"uncond": u, "cond": c}, step)
        torch.testing.assert_close(v, cfg(u, c, 7.5), rtol=1e-5, atol=1e-5)


def test_scfg_prediction_follows_the_maps():
    """Non-uniform maps: regions from the conditional maps, foreground from ``fore_maps``, ρ from ``scale_map``."""
    torch.manual_seed(0)
    layout = SD3_LAYOUT
    u, c = velocity(layout, 0), velocity(layout, 1)
    cond, fore = torch.rand(5, layout.h, layout.w), torch.rand(5, layout.h, layout.w)
    masks = region_masks(torch.cat([cond[:1], cond[2:]]))
    rho = scale_map(layout.token_norms(c - u)[0], masks, foreground_mask(fore[0], fore[1]), 7.5)
    expected = u + 7.5 * layout.to_prediction(rho[None]) * (c - u)
    torch.testing.assert_close(scfg_prediction(u, c, 7.5, cond, fore, layout), expected)
    assert (expected - cfg(u, c, 7.5)).abs().max() > 1e-3


@pytest.mark.parametrize("preset", ["tiny-flux", "tiny-sd3"])
def test_scfg_end_to_end(preset):
    adapter = adapter_for(tiny(preset))
    sdpa = torch.nn.functional.scaled_dot_product_attention
    processors = [block.attn.processor for _, block, _ in adapter.blocks]
    reference = sample(adapter, CFG(7.5), REQUEST, **RUN)
    for method in (SCFG(7.5), SCFG(7.5, layers=("1", "4"), completion="code", foreground_from="uncond")):
        image = sample(adapter, method, REQUEST, **RUN)
        assert torch.isfinite(image).all()
        assert (image - reference).abs().max() > 1e-3
    assert [block.attn.processor for _, block, _ in adapter.blocks] == processors
    assert torch.nn.functional.scaled_dot_product_attention is sdpa
    assert all(not block.attn._forward_pre_hooks and not block.attn._forward_hooks for _, block, _ in adapter.blocks)


def test_scfg_settings():
    adapter = adapter_for(tiny("tiny-sd3"))
    assert adapter.default_attention_layers() == ["2", "3"]
    assert SCFG().recorded_attention(adapter) == (("2", "3"), ("cond",))
    assert SCFG(layers=(1, "4"), foreground_from="uncond").recorded_attention(adapter) == (("1", "4"), ("cond", "uncond"))
    params = SCFG(5.0, layers=("3",), completion="code", foreground_from="uncond").params()
    assert params["cfg_scale"] == 5.0 and params["layers"] == ["3"]
    assert params["completion"] == "code" and params["foreground_from"] == "uncond"
    assert SCFG().bind(adapter).layers == ("2", "3") and SCFG().bind(adapter).params()["layers"] == ["2", "3"]
    assert SCFG().conditions(Request("p", "n")) == {"uncond": "n", "cond": "p"}
    with pytest.raises(ValueError, match="foreground_from"):
        SCFG(foreground_from="both")
    with pytest.raises(ValueError, match="completion"):
        SCFG(completion="other")
    with pytest.raises(KeyError):  # combine needs the step's recorded attention
        SCFG().combine({"uncond": torch.zeros(1, 4, 8, 8), "cond": torch.zeros(1, 4, 8, 8)}, Step(0, 1, layout=SD3_LAYOUT))
