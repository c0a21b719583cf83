"""``SCFG(reference=True)`` against an independent transcription of S-CFG's reference code (github
SmilesDZgk/S-CFG: ``sd/gaussian_smoothing.py`` ``GaussianSmoothing``, ``sd/utils.py`` ``get_mask`` and the
guidance block of ``sd/sd.py``), on synthetic attention and predictions, to float32 rounding: each of the five
points where the default (the paper's choices) differs from the code, then all of them together; and end-to-end
runs on tiny models.

The transcription works as the reference does: a UNet whose cross-attention softmax runs over the text keys
alone and whose self-attention softmax over the image keys alone (head-averaged by the attention store), lists
of per-layer maps for the batch ``[uncond, cond]``, square token grids, spatial ``[B, C, H, W]`` latents and
token masks upsampled to them by nearest interpolation. FLUX-like packed predictions are unpacked for it with
diffusers' own ``FluxPipeline._unpack_latents``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from diffusers import FluxPipeline

import cslg
from cslg.guidance.attention import AttentionMaps, AttentionSink, SDPAHandler
from cslg.cli.grid import cells_of
from cslg.families import adapter_for
from cslg.families.layout import AttentionLayout, LatentLayout, TextRoles
from cslg.methods import CFG, Step
from cslg.methods.scfg import (
    SCFG,
    foreground_mask,
    foreground_maps,
    layer_token_maps,
    mean_normalise,
    normalise,
    pixel_prediction,
    region_masks,
    reference_prediction,
    role_maps,
    scale_map,
    smooth,
    tie_masks,
)

from ..helpers import tiny

W = 7.5
SIDE = 6  # square token grid (the reference reads h = w = √N)
N = SIDE * SIDE
T = 10  # text tokens: 0 the start token, 1..4 the prompt, 5..9 end and padding
ROLES = TextRoles(content=(1, 2, 3, 4), background=(0,), text_len=T)
SPATIAL = LatentLayout(SIDE, SIDE, patch=2)  # SD3 / PixArt
PACKED = LatentLayout(SIDE, SIDE, packed=4)  # FLUX / Qwen-Image
CHANNELS = 4
LAYOUTS = pytest.mark.parametrize("layout", [SPATIAL, PACKED], ids=["spatial", "packed"])


# The transcription of the reference code -----------------------------------------------------------------------
def ref_kernel(size: int = 3, sigma: float = 0.5) -> torch.Tensor:
    """``GaussianSmoothing(channels=1, kernel_size=3, sigma=0.5, dim=2)``'s weights: a product over the two axes
    of ``1/(σ√(2π)) · exp(-((x - mean)/(2σ))²)`` on ``x = 0..size-1``, then divided by the total."""
    axes = torch.meshgrid([torch.arange(size, dtype=torch.float32)] * 2, indexing="ij")
    weights = 1
    for x in axes:
        centre = (size - 1) / 2
        weights = weights * (1 / (sigma * math.sqrt(2 * math.pi)) * torch.exp(-(((x - centre) / (2 * sigma)) ** 2)))
    return weights / weights.sum()


def ref_smooth(maps: torch.Tensor) -> torch.Tensor:
    """``[B, h, w]``: reflect-pad by one, then the depthwise 3x3 convolution with ``ref_kernel``."""
    padded = F.pad(maps[:, None].float(), (1, 1, 1, 1), mode="reflect")
    return F.conv2d(padded, ref_kernel()[None, None])[:, 0]


def ref_unet_attention(q: torch.Tensor, k: torch.Tensor, text: slice, image: slice) -> tuple[torch.Tensor, torch.Tensor]:
    """What the reference's attention store holds for one layer: the heads' mean of ``softmax(q kᵀ/√d)`` of the
    image queries, with the cross-attention softmax over the text keys alone and the self-attention softmax
    over the image keys alone (a UNet's separate calls)."""
    qi, d = q[:, :, image], q.shape[-1]
    cross = torch.softmax(qi @ k[:, :, text].transpose(-1, -2) / math.sqrt(d), dim=-1).mean(1)
    self_attn = torch.softmax(qi @ k[:, :, image].transpose(-1, -2) / math.sqrt(d), dim=-1).mean(1)
    return cross, self_attn


def ref_layer_maps(self_maps: list[torch.Tensor], cross_maps: list[torch.Tensor]
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loop of ``get_mask`` for one resolution: per layer of ``[2, N, N]`` self- and ``[2, N, T]``
    cross-attention (rows uncond, cond), the completion ``(S + 3 S·S)/4`` (the loop adds ``S·S`` three times),
    ``C ← S' C``, token maps on the square grid, Gaussian smoothing, each map over its spatial mean + 1e-8; the
    pair (start token, sum of all later tokens) from the smoothed maps, each over its spatial mean. Both are
    summed over the layers and divided by their count: ``[2, T, h, w]`` and ``[2, 2, h, w]``."""
    n_layers = len(self_maps)
    sa = torch.stack(self_maps, dim=1).flatten(0, 1)  # (batch layer) N N
    ca = torch.stack(cross_maps, dim=1).flatten(0, 1)
    completed = sa.clone()
    for _ in range(3):
        completed = completed + sa @ sa
    completed = completed / 4
    ca = completed @ ca
    side = int(sa.shape[1] ** 0.5)
    ca = ca.transpose(1, 2).reshape(ca.shape[0], ca.shape[2], side, side)
    ca = ref_smooth(ca.flatten(0, 1)).reshape(ca.shape)
    ca_norm = ca / (ca.mean(dim=(2, 3), keepdim=True) + 1e-8)
    tokens = ca_norm.reshape(2, n_layers, *ca.shape[1:]).sum(1) / n_layers
    pair = torch.stack([ca[:, 0], ca[:, 1:].sum(dim=1)], dim=1)
    pair = pair / pair.mean(dim=(2, 3), keepdim=True)
    fore = pair.reshape(2, n_layers, *pair.shape[1:]).sum(1) / n_layers
    return tokens, fore


def ref_masks(tokens: torch.Tensor, fore: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The end of ``get_mask``: regions from the conditional half (every channel that equals the maximum over
    channels), foreground from the unconditional half (where the start channel is not the maximum)."""
    cond = tokens[1:2]
    regions = (cond == cond.max(dim=1, keepdim=True).values).float()
    uncond = fore[0:1]
    foreground = 1.0 - (uncond == uncond.max(dim=1, keepdim=True).values).float()[:, :1]
    return regions, foreground


def ref_guidance(u: torch.Tensor, c: torch.Tensor, regions: torch.Tensor, foreground: torch.Tensor, factor: int,
                 w: float) -> torch.Tensor:
    """The guidance block of ``sd.py`` on spatial latents ``[1, C, H, W]``: masks upsampled (nearest) by
    ``factor``, ``‖c - u‖`` over channels per latent pixel, the ratio of foreground to region means, clamps,
    Gaussian smoothing of the rate, ``u + w · rate · (c - u)``."""
    regions = F.interpolate(regions, scale_factor=factor, mode="nearest")
    foreground = F.interpolate(foreground, scale_factor=factor, mode="nearest")
    delta = c - u
    norm = delta.norm(dim=1, keepdim=True)
    region_norms = (norm * regions).sum([2, 3]) / (regions.sum([2, 3]) + 1e-8)
    fore_norm = (norm * foreground).sum([2, 3]) / (foreground.sum([2, 3]) + 1e-8)
    present = (regions.sum([2, 3]) > 0).float()
    rate = fore_norm * present / (region_norms + 1e-8)
    rate = (rate[..., None, None] * regions).sum(dim=1, keepdim=True)
    rate = torch.clamp(rate, min=0.8, max=3.0).clamp_max(15.0 / w)
    rate = F.conv2d(F.pad(rate, (1, 1, 1, 1), mode="reflect"), ref_kernel()[None, None])
    return u + w * rate * delta


# Between the layouts ---------------------------------------------------------------------------------------------
def to_spatial(x: torch.Tensor, layout: LatentLayout) -> torch.Tensor:
    if layout.packed is None:
        return x
    return FluxPipeline._unpack_latents(x, layout.h * 16, layout.w * 16, 8)  # 2h x 2w latent pixels


def from_spatial(x: torch.Tensor, layout: LatentLayout) -> torch.Tensor:
    if layout.packed is None:
        return x
    return FluxPipeline._pack_latents(x, x.shape[0], x.shape[1], x.shape[2], x.shape[3])


def velocity(layout: LatentLayout, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    spatial = torch.randn(1, CHANNELS, layout.h * 2, layout.w * 2, generator=g)
    return from_spatial(spatial, layout)


# Synthetic attention ----------------------------------------------------------------------------------------------
def synthetic_maps(n_layers: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-layer row-stochastic cross ``[2, L, N, T]`` and self ``[2, L, N, N]`` maps of the lanes uncond, cond,
    peaked enough to have structure."""
    g = torch.Generator().manual_seed(seed)
    cross = (3 * torch.randn(2, n_layers, N, T, generator=g)).softmax(-1)
    self_attn = (3 * torch.randn(2, n_layers, N, N, generator=g)).softmax(-1)
    return cross, self_attn


def synthetic_qk(text_first: bool, seed: int, heads: int = 3, d: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Queries and keys ``[2, heads, N + T, d]`` of one joint attention call (lanes uncond, cond)."""
    g = torch.Generator().manual_seed(seed)
    q = 2 * torch.randn(2, heads, N + T, d, generator=g)
    k = 2 * torch.randn(2, heads, N + T, d, generator=g)
    return q, k


def joint_slices(text_first: bool) -> tuple[slice, slice]:
    """(text keys, image keys) of a joint sequence."""
    return (slice(0, T), slice(T, T + N)) if text_first else (slice(N, N + T), slice(0, N))


def record(qks: list[tuple[torch.Tensor, torch.Tensor]], text_first: bool, sink: AttentionSink) -> dict[str, AttentionMaps]:
    """The toolkit's recording of the joint calls ``qks`` (one per block) into ``sink``."""
    for q, k in qks:
        handler = SDPAHandler(AttentionLayout("joint", text_first), N, record=[(0, "uncond"), (1, "cond")], sink=sink)
        handler(F.scaled_dot_product_attention, q, k, torch.randn_like(k))
    return sink.take()


# 1. The smoothing kernel -----------------------------------------------------------------------------------------------
def test_point1_kernel_is_the_reference_gaussian():
    torch.manual_seed(0)
    maps = torch.rand(5, 7, 9)
    torch.testing.assert_close(smooth(maps, kernel="code"), ref_smooth(maps), rtol=1e-6, atol=1e-7)
    # the code's exp(-(x/2σ)²) is a Gaussian of standard deviation σ√2
    torch.testing.assert_close(smooth(maps, 0.5 * math.sqrt(2), kernel="paper"), smooth(maps, kernel="code"))
    assert (smooth(maps) - ref_smooth(maps)).abs().max() > 1e-2, "the paper's kernel equals the code's"
    with pytest.raises(ValueError, match="kernel"):
        smooth(maps, kernel="box")


# 2. Which tokens compete for regions -------------------------------------------------------------------------------
def test_point2_every_token_competes():
    cross, self_attn = synthetic_maps(2, seed=1)
    tokens, fore = ref_layer_maps(list(self_attn.unbind(1)), list(cross.unbind(1)))
    tokens[1, 7] = tokens[1, 1]  # a padding token that ties with a prompt token: both hold the positions
    regions, _ = ref_masks(tokens, fore)
    ours = tie_masks(tokens[1])
    assert torch.equal(ours, regions[0])
    assert ours[5:].sum() > 0, "no end or padding token wins a position: the test could not fail"
    assert torch.equal(ours[7], ours[1]) and ours[1].sum() > 0
    # the default lets the start token and the prompt's tokens compete, one region per position
    default = region_masks(torch.cat([tokens[1, :1], tokens[1, 1:5]]))
    assert torch.equal(default.sum(0), torch.ones(SIDE, SIDE))
    assert not torch.equal(default, ours[:5])


# 3. ‖η‖ and ρ on latent pixels -----------------------------------------------------------------------------------
@LAYOUTS
def test_point3_scale_on_latent_pixels(layout):
    cross, self_attn = synthetic_maps(2, seed=2)
    tokens, fore = ref_layer_maps(list(self_attn.unbind(1)), list(cross.unbind(1)))
    regions, foreground = ref_masks(tokens, fore)
    u, c = velocity(layout, 0), velocity(layout, 1)
    expected = ref_guidance(to_spatial(u, layout), to_spatial(c, layout), regions, foreground, 2, W)
    ours = pixel_prediction(u, c, W, regions[0], foreground[0, 0] > 0, layout, kernel="code")
    torch.testing.assert_close(ours, from_spatial(expected, layout), rtol=1e-5, atol=1e-6)
    # per token (the default's resolution), with everything else the same
    rho = scale_map(layout.token_norms(c - u)[0], regions[0], foreground[0, 0] > 0, W, kernel="code")
    per_token = u + W * layout.to_prediction(rho[None]) * (c - u)
    assert (per_token - ours).abs().max() > 1e-2


@LAYOUTS
def test_latent_pixels_round_trip(layout):
    """``to_pixels`` is diffusers' unpacking (packed) or the identity (spatial); ``from_pixels`` inverts it;
    ``upsample`` is nearest interpolation."""
    x = velocity(layout, 3)
    assert torch.equal(layout.to_pixels(x), to_spatial(x, layout))
    assert torch.equal(layout.from_pixels(layout.to_pixels(x)), x)
    token_map = torch.rand(2, layout.h, layout.w)
    assert torch.equal(layout.upsample(token_map), F.interpolate(token_map[None], scale_factor=2, mode="nearest")[0])


# 4. Per-layer spatial normalisation before the layer average ---------------------------------------------------------
def test_point4_per_layer_normalisation():
    cross, self_attn = synthetic_maps(3, seed=4)
    tokens, fore = ref_layer_maps(list(self_attn.unbind(1)), list(cross.unbind(1)))
    for lane in range(2):
        maps = layer_token_maps(cross[lane], self_attn[lane], SPATIAL, "code", "code")
        torch.testing.assert_close(mean_normalise(maps), tokens[lane], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(foreground_maps(maps, ROLES), fore[lane], rtol=1e-5, atol=1e-6)
    regions, foreground = ref_masks(tokens, fore)
    cond, uncond = (layer_token_maps(cross[i], self_attn[i], SPATIAL) for i in (1, 0))
    assert torch.equal(tie_masks(mean_normalise(cond)), regions[0])
    ours_fore = foreground_maps(uncond, ROLES)
    assert torch.equal(ours_fore[1] > ours_fore[0], foreground[0, 0] > 0)
    # the blocks averaged first (the default), then normalised
    averaged = layer_token_maps(cross[1].mean(0, keepdim=True), self_attn[1].mean(0, keepdim=True), SPATIAL)[0]
    assert (normalise(averaged) * N - tokens[1]).abs().max() > 1e-2


# 5. Per-head renormalisation before the head average ---------------------------------------------------------------
@pytest.mark.parametrize("text_first", [True, False], ids=["text-first", "image-first"])
def test_point5_per_head_renormalisation(text_first):
    q, k = synthetic_qk(text_first, seed=5)
    text, image = joint_slices(text_first)
    cross, self_attn = ref_unet_attention(q, k, text, image)
    maps = record([(q, k)], text_first, AttentionSink(per_head=True))
    for lane, name in enumerate(("uncond", "cond")):
        torch.testing.assert_close(maps[name].cross, cross[lane], rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(maps[name].self_attn, self_attn[lane], rtol=1e-5, atol=1e-7)
        assert maps[name].cross_layers is None  # per_layer not asked for
    default = record([(q, k)], text_first, AttentionSink())  # heads averaged over the whole row, then renormalised
    assert (default["cond"].cross - cross[1]).abs().max() > 1e-2


def test_sink_keeps_per_layer_maps():
    sink = AttentionSink(per_layer=True)
    for x in (1.0, 3.0):
        sink.add("cond", "cross", torch.full((2, 3), x))
        sink.add("cond", "self", torch.full((2, 2), 2 * x))
    maps = sink.take()["cond"]
    assert torch.equal(maps.cross, torch.full((2, 3), 2.0)) and torch.equal(maps.self_attn, torch.full((2, 2), 4.0))
    assert torch.equal(maps.cross_layers, torch.stack([torch.full((2, 3), 1.0), torch.full((2, 3), 3.0)]))
    assert torch.equal(maps.self_layers, torch.stack([torch.full((2, 2), 2.0), torch.full((2, 2), 6.0)]))
    assert sink.take() == {}
    sink.add("cond", "cross", torch.ones(2, 3))
    sink.add("cond", "cross", torch.ones(2, 3))
    sink.add("cond", "self", torch.ones(2, 2))
    with pytest.raises(RuntimeError, match="one of each per block"):
        sink.take()


# All five together -----------------------------------------------------------------------------------------------------
def reference_step(layout: LatentLayout, text_first: bool, seed: int, n_layers: int = 3):
    """Synthetic joint attention of ``n_layers`` blocks recorded as ``SCFG(reference=True)`` asks, the Step
    ``combine`` sees, and the transcription's guided prediction from the same queries and keys."""
    qks = [synthetic_qk(text_first, seed + i) for i in range(n_layers)]
    u, c = velocity(layout, seed), velocity(layout, seed + 100)
    step = Step(0, 1, layout=layout, attention=record(qks, text_first, SCFG(reference=True).attention_sink()),
                roles={"cond": ROLES, "uncond": ROLES})
    text, image = joint_slices(text_first)
    stored = [ref_unet_attention(q, k, text, image) for q, k in qks]
    tokens, fore = ref_layer_maps([s for _, s in stored], [x for x, _ in stored])
    regions, foreground = ref_masks(tokens, fore)
    assert 0 < foreground.sum() < N and regions[0, 5:].sum() > 0, "degenerate synthetic maps"
    expected = ref_guidance(to_spatial(u, layout), to_spatial(c, layout), regions, foreground, 2, W)
    return u, c, step, from_spatial(expected, layout)


@pytest.mark.parametrize("layout,text_first", [(SPATIAL, False), (PACKED, True)], ids=["sd3-like", "flux-like"])
def test_reference_mode_equals_the_transcription(layout, text_first):
    u, c, step, expected = reference_step(layout, text_first, seed=10)
    method = SCFG(W, reference=True)
    v = method.combine({"uncond": u, "cond": c}, step)
    torch.testing.assert_close(v, expected, rtol=1e-5, atol=1e-6)
    # the default (the paper's choices) and the old flags differ on the same inputs
    for other in (SCFG(W), SCFG(W, completion="code", foreground_from="uncond")):
        assert (other.combine({"uncond": u, "cond": c}, step) - v).abs().max() > 1e-2


def test_reference_mode_needs_per_layer_maps():
    u, c, step, _ = reference_step(SPATIAL, False, seed=20, n_layers=1)
    averaged = {name: AttentionMaps(m.cross, m.self_attn) for name, m in step.attention.items()}
    with pytest.raises(RuntimeError, match="per-layer"):
        SCFG(reference=True).combine({"uncond": u, "cond": c}, Step(0, 1, layout=SPATIAL, attention=averaged,
                                                                     roles=step.roles))


def test_reference_prediction_from_maps():
    """``reference_prediction`` is ``pixel_prediction`` of the tie masks and the foreground of the per-block maps."""
    cross, self_attn = synthetic_maps(2, seed=6)
    cond, uncond = (layer_token_maps(cross[i], self_attn[i], PACKED) for i in (1, 0))
    u, c = velocity(PACKED, 0), velocity(PACKED, 1)
    fore = foreground_maps(uncond, ROLES)
    expected = pixel_prediction(u, c, W, tie_masks(mean_normalise(cond)), fore[1] > fore[0], PACKED)
    assert torch.equal(reference_prediction(u, c, W, cond, uncond, ROLES, PACKED), expected)
    # the default pipeline on the same (block-averaged) maps
    avg = [role_maps(cross[i].mean(0), self_attn[i].mean(0), ROLES, PACKED, "code") for i in (1, 0)]
    masks = region_masks(torch.cat([avg[0][:1], avg[0][2:]]))
    rho = scale_map(PACKED.token_norms(c - u)[0], masks, foreground_mask(avg[1][0], avg[1][1]), W)
    assert (u + W * PACKED.to_prediction(rho[None]) * (c - u) - expected).abs().max() > 1e-2


# Settings ---------------------------------------------------------------------------------------------------------------
def test_reference_settings():
    method = SCFG(5.0, reference=True)
    assert method == SCFG(5.0, completion="code", foreground_from="uncond", reference=True)
    assert (method.completion, method.foreground_from) == ("code", "uncond")
    assert SCFG() == SCFG(completion="paper", foreground_from="cond", reference=False)
    assert SCFG() != SCFG(reference=True)
    with pytest.raises(ValueError, match="implies completion"):
        SCFG(reference=True, completion="paper")
    with pytest.raises(ValueError, match="implies foreground_from"):
        SCFG(reference=True, foreground_from="cond")
    sink, default = method.attention_sink(), SCFG().attention_sink()
    assert sink.per_head and sink.per_layer and not default.per_head and not default.per_layer
    params = method.params()
    assert params["reference"] is True
    assert params["completion"] == "code" and params["foreground_from"] == "uncond"
    assert SCFG().params()["reference"] is False
    base = ["--methods", "scfg", "--cfg-scales", "4,7.5"]
    assert cells_of([*base, "--scfg-reference"]) == [SCFG(4.0, reference=True), SCFG(7.5, reference=True)]
    assert cells_of(base) == [SCFG(4.0), SCFG(7.5)]
    assert cells_of([*base, "--scfg-completion", "code"]) == [SCFG(4.0, completion="code"), SCFG(7.5, completion="code")]


# End to end -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("preset", ["tiny-sd3", "tiny-flux", "tiny-pixart-sigma"])
def test_reference_mode_end_to_end(preset):
    pipe = tiny(preset)
    run = dict(seed=0, steps=3, height=32, width=32, max_sequence_length=32, output_type="np", progress=False)
    prompt = "a red book and a gold clock"
    cfg_image = cslg.generate(pipe, prompt, CFG(W), **run).images[0]
    paper = cslg.generate(pipe, prompt, SCFG(W), **run).images[0]
    reference = cslg.generate(pipe, prompt, SCFG(W, reference=True), **run).images[0]
    assert reference.shape == cfg_image.shape and (reference == reference).all()
    assert abs(reference - cfg_image).max() > 1e-3
    assert abs(reference - paper).max() > 1e-3
    adapter = adapter_for(pipe)
    assert all(not m._forward_pre_hooks and not m._forward_hooks
               for _, block, bl in adapter.blocks for m, _ in adapter.attention_calls(block, bl))
