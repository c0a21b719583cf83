"""S-CFG (Shen et al., CVPR 2024, "Rethinking the Spatial Inconsistency in Classifier-Free Diffusion
Guidance") on MMDiT: CFG with a per-image-token scale map ``ρ`` from the step's own attention maps,
``v = u + w ρ ⊙ (c - u)``. No extra forward pass.

Per step (η = c - u, on velocities):
1. record the head-averaged image->text (``C``) and image->image (``S``) probabilities of the chosen
   blocks in the [negative, prompt] forward and average them over the blocks;
2. complete the text maps with self-attention (paper: ``C̄ = (1/R) Σ_{r=1..R} S^r C``, R = 4), lay them
   on the token grid, smooth them (3x3 Gaussian, σ 0.5) and normalise each by its spatial sum;
3. regions: every image token goes to the argmax over the background map and the content-token maps
   (conditional lane); foreground: where the summed maps of all non-background tokens beat the
   background map;
4. ``ρ_i = N_fg / N_i`` per region with ``N`` the mean of ``‖η‖₂`` (over a token's channels) in the
   foreground / in region i, clamped to [0.8, 3.0], capped at 15/w, smoothed like the maps.

Background tokens stand in for the UNet's start token (each adapter's ``text_roles``: SD3 the CLIP ``<sot>``,
FLUX the T5 padding tokens). Deviations from the reference code, as flags: ``completion="code"``
computes ``(S + 3 S²)/4 · C``; ``foreground_from="uncond"`` takes the foreground from the negative lane.
The completion runs on the block-averaged maps (the reference completes every layer and averages after).

``reference=True`` makes every choice of the reference code (github SmilesDZgk/S-CFG, ``sd/utils.py`` ``get_mask``
and ``sd/sd.py``): both flags above, and
- the smoothing kernel ``exp(-((x - m) / (2σ))²)`` (effectively σ√2 ≈ 0.707 for σ = 0.5), for the maps and for ρ;
- every text token competes for the regions (end and padding tokens too; tokens that tie share the position);
- ``‖η‖`` over each latent pixel's channels, ρ on the latent pixels (regions upsampled nearest) and smoothed there;
- each block's maps completed, smoothed and divided by their spatial mean (token maps: + 1e-8) before the blocks
  are averaged (the foreground's two maps too);
- image->text (and image->image) probabilities renormalised per head before the heads are averaged (the UNet's
  cross-attention softmax runs over the text keys alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..families.layout import LatentLayout, TextRoles
from ..guidance.attention import AttentionSink
from ..guidance.passes import Pass
from .base import Method, cfg_scale_option
from .schema import option

COMPLETION_STEPS = 4  # R: powers of the self-attention averaged in the completion
SMOOTH_SIGMA = 0.5  # 3x3 Gaussian on the token grid, for the maps and for ρ
SCALE_MIN, SCALE_MAX = 0.8, 3.0  # clamp of ρ
SCALE_CAP = 15.0  # ρ <= SCALE_CAP / w
EPS = 1e-8

COMPLETIONS = ("paper", "code")
FOREGROUND_SOURCES = ("cond", "uncond")
KERNELS = ("paper", "code")  # exp(-x²/(2σ²)) | the reference code's exp(-(x/(2σ))²)


# Pure formulas on the token grid ---------------------------------------------------------------------------
def guide(u: torch.Tensor, c: torch.Tensor, w: float, rho: torch.Tensor) -> torch.Tensor:
    """Spatially scaled CFG: ``v = u + w ρ ⊙ (c - u)`` (``ρ`` broadcast to the velocity layout)."""
    return u + w * rho * (c - u)


def complete(
    cross: torch.Tensor, self_attn: torch.Tensor, mode: str = "paper", steps: int = COMPLETION_STEPS
) -> torch.Tensor:
    """Self-attention completion of token maps ``cross`` ``[..., N, K]`` with ``self_attn`` ``[..., N, N]``.

    paper: ``C̄ = (1/R) Σ_{r=1..R} S^r C``;  code (reference implementation): ``C̄ = (S + (R-1) S²) C / R``.
    """
    if mode not in COMPLETIONS:
        raise ValueError(f"completion must be one of {COMPLETIONS}, got {mode!r}")
    once = self_attn @ cross
    if mode == "code":
        return (once + (steps - 1) * (self_attn @ once)) / steps
    total, power = once, once
    for _ in range(steps - 1):
        power = self_attn @ power
        total = total + power
    return total / steps


def smooth(maps: torch.Tensor, sigma: float = SMOOTH_SIGMA, kernel: str = "paper") -> torch.Tensor:
    """3x3 Gaussian smoothing (σ ``sigma``, kernel normalised to sum 1, reflect padding) of ``[..., h, w]``.

    ``kernel``: ``"paper"`` weighs offset x by ``exp(-x²/(2σ²))``; ``"code"`` by the reference code's
    ``exp(-(x/(2σ))²)``, a Gaussian of standard deviation σ√2.
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    x = torch.tensor([-1.0, 0.0, 1.0], device=maps.device)
    g = torch.exp(-(x**2) / (2 * sigma**2)) if kernel == "paper" else torch.exp(-((x / (2 * sigma)) ** 2))
    kernel = torch.outer(g, g) / torch.outer(g, g).sum()
    flat = maps.reshape(-1, 1, *maps.shape[-2:]).float()
    out = F.conv2d(F.pad(flat, (1, 1, 1, 1), mode="reflect"), kernel[None, None])
    return out.reshape(maps.shape)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    """Each map of ``[..., h, w]`` divided by its spatial sum."""
    return maps / (maps.sum(dim=(-2, -1), keepdim=True) + EPS)


def region_masks(maps: torch.Tensor) -> torch.Tensor:
    """One-hot regions ``[K, h, w]``: position s goes to ``argmax_k maps[k, s] / Σ_s' maps[k, s']``.

    Ties go to the first map, so the regions partition the grid.
    """
    return F.one_hot(normalise(maps).argmax(dim=0), maps.shape[0]).permute(2, 0, 1).to(maps.dtype)


def foreground_mask(background: torch.Tensor, others: torch.Tensor) -> torch.Tensor:
    """Foreground ``[h, w]`` (bool): where the background map is not the larger of (background, others).

    Both maps are spatially normalised first.
    """
    return normalise(others) > normalise(background)


def scale_map(eta_norm: torch.Tensor, masks: torch.Tensor, foreground: torch.Tensor, w: float,
              kernel: str = "paper") -> torch.Tensor:
    """S-CFG scale map ``ρ`` ``[h, w]`` from ``n = ‖η‖₂`` per position ``[h, w]`` (token or latent pixel),
    regions ``masks`` ``[K, h, w]`` and the ``foreground`` ``[h, w]``.

    ``N_i = mean_{m_i} n``, ``N_fg = mean_{foreground} n``, ``ρ_i = N_fg / N_i`` (0 for empty regions),
    ``ρ = Σ_i ρ_i m_i``, clamped to ``[SCALE_MIN, SCALE_MAX]``, capped at ``SCALE_CAP / w``, smoothed (``kernel``).
    """
    area = masks.sum(dim=(-2, -1))
    n_region = (masks * eta_norm).sum(dim=(-2, -1)) / (area + EPS)
    fg = foreground.to(eta_norm.dtype)
    n_fg = (fg * eta_norm).sum() / (fg.sum() + EPS)
    rho_region = torch.where(area > 0, n_fg / (n_region + EPS), torch.zeros_like(n_region))
    rho = (rho_region[:, None, None] * masks).sum(dim=0)
    rho = rho.clamp(SCALE_MIN, SCALE_MAX).clamp_max(SCALE_CAP / w)
    return smooth(rho, kernel=kernel)


# The reference code's choices (``SCFG(reference=True)``) -----------------------------------------------------
def layer_token_maps(cross: torch.Tensor, self_attn: torch.Tensor, layout: LatentLayout, completion: str = "code",
                     kernel: str = "code") -> torch.Tensor:
    """Completed, smoothed maps of every text token for each block: ``cross`` ``[L, N, T]``, ``self_attn``
    ``[L, N, N]`` -> ``[L, T, h, w]`` (each block completed with its own self-attention)."""
    maps = complete(cross, self_attn, completion)
    return smooth(maps.transpose(-1, -2).reshape(*maps.shape[:-2], maps.shape[-1], layout.h, layout.w), kernel=kernel)


def mean_normalise(maps: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """Each block's maps ``[L, K, h, w]`` divided by their spatial mean (+ ``eps``), averaged over the blocks
    (the reference code's spatial normalisation before its layer average): ``[K, h, w]``."""
    return (maps / (maps.mean(dim=(-2, -1), keepdim=True) + eps)).mean(dim=0)


def foreground_maps(maps: torch.Tensor, roles: TextRoles) -> torch.Tensor:
    """The background map and the summed map of every other token of each block (``[L, T, h, w]``), each divided
    by its spatial mean (no ``eps``, as the code), averaged over the blocks: ``[2, h, w]``."""
    pair = torch.stack([maps[:, list(roles.background)].sum(dim=1), maps[:, list(roles.others)].sum(dim=1)], dim=1)
    return mean_normalise(pair, eps=0.0)


def tie_masks(maps: torch.Tensor) -> torch.Tensor:
    """Regions ``[K, h, w]`` where every map that reaches the maximum over ``maps`` ``[K, h, w]`` holds the
    position (the reference code's ``maps == max``: maps that tie share a position, and their ρ_i add up)."""
    return (maps == maps.max(dim=0, keepdim=True).values).to(maps.dtype)


def pixel_prediction(u: torch.Tensor, c: torch.Tensor, w: float, masks: torch.Tensor, foreground: torch.Tensor,
                     layout: LatentLayout, kernel: str = "code") -> torch.Tensor:
    """``v = u + w ρ ⊙ (c - u)`` with ρ on the latent pixels: token regions ``masks`` ``[K, h, w]`` and the
    ``foreground`` ``[h, w]`` upsampled (nearest), ``‖η‖₂`` over each latent pixel's channels, ``scale_map``
    (smoothed with ``kernel``) on the pixel grid."""
    u_px, c_px = layout.to_pixels(u), layout.to_pixels(c)
    eta_norm = (c_px - u_px).float().norm(dim=1)[0]
    rho = scale_map(eta_norm, layout.upsample(masks), layout.upsample(foreground), w, kernel)
    return layout.from_pixels(guide(u_px, c_px, w, rho[None, None].to(u.dtype)))


def reference_prediction(u: torch.Tensor, c: torch.Tensor, w: float, cond_maps: torch.Tensor,
                         fore_maps: torch.Tensor, roles: TextRoles, layout: LatentLayout) -> torch.Tensor:
    """S-CFG as the reference code computes it, from the per-block token maps (``layer_token_maps``) of the
    conditional pass (regions: every token, ``tie_masks`` of the mean-normalised maps) and of the pass the
    foreground comes from (``foreground_maps``: where the others' map beats the background's); ρ on the latent
    pixels (``pixel_prediction``)."""
    fore = foreground_maps(fore_maps, roles)
    return pixel_prediction(u, c, w, tie_masks(mean_normalise(cond_maps)), fore[1] > fore[0], layout, "code")


# The method ---------------------------------------------------------------------------------------------
def role_maps(cross: torch.Tensor, self_attn: torch.Tensor, roles: TextRoles, layout: LatentLayout,
              completion: str) -> torch.Tensor:
    """Completed, smoothed maps ``[2 + K, h, w]`` of one pass: background, all other tokens, then each content
    token (maps of several tokens are summed before the completion, which is linear)."""
    groups = [roles.background, roles.others] + [(i,) for i in roles.content]
    select = torch.zeros(cross.shape[-1], len(groups), device=cross.device)
    for j, tokens in enumerate(groups):
        select[list(tokens), j] = 1.0
    maps = complete(cross @ select, self_attn, completion)  # [N, 2 + K]
    return smooth(maps.T.reshape(len(groups), layout.h, layout.w))


def scfg_prediction(u: torch.Tensor, c: torch.Tensor, w: float, cond_maps: torch.Tensor, fore_maps: torch.Tensor,
                    layout: LatentLayout) -> torch.Tensor:
    """S-CFG from the role maps of the conditional pass and of the pass the foreground comes from
    (``role_maps`` layout): regions, foreground, ``ρ`` and ``v = u + w ρ ⊙ (c - u)``."""
    masks = region_masks(torch.cat([cond_maps[:1], cond_maps[2:]]))  # background + content tokens
    foreground = foreground_mask(fore_maps[0], fore_maps[1])
    rho = scale_map(layout.token_norms(c - u)[0], masks, foreground, w)
    return guide(u, c, w, layout.to_prediction(rho[None]).to(u.dtype))


@dataclass(frozen=True)
class SCFG(Method):
    """S-CFG: ``v = u + w ρ ⊙ (c - u)`` every step; on FLUX and Qwen-Image this modulates true CFG.

    ``layers``: blocks whose attention is recorded (default: the adapter's ``default_attention_layers``, the
    middle third of the first block list). ``completion``: ``"paper"`` (default) or ``"code"``;
    ``foreground_from``: the conditional pass (``"cond"``, paper, default) or the unconditional one (``"uncond"``,
    reference code). ``reference``: every choice of the reference code (module docstring), which implies
    ``completion="code"`` and ``foreground_from="uncond"``.
    """

    cfg_scale: float | None = cfg_scale_option()
    layers: tuple[str, ...] | None = option(None, "blocks whose attention S-CFG records (default: the middle third "
                                            "of the first block list)", family_default="default_attention_layers")
    completion: str | None = option(None, "self-attention completion: paper, (1/R) Σ S^r C; code, (S + 3 S²) C / 4 "
                                    "(default: paper, code with --scfg-reference)", choices=COMPLETIONS)
    foreground_from: str | None = option(None, "the pass the foreground comes from (default: cond, uncond with "
                                         "--scfg-reference)", choices=FOREGROUND_SOURCES)
    reference: bool = option(False, "every choice of S-CFG's reference code (README, Baselines)")
    name = "scfg"
    title = "S-CFG: per-region CFG scales from the step's attention maps"

    def check(self):
        implied = {"completion": "code", "foreground_from": "uncond"} if self.reference else {}
        for key, paper in (("completion", "paper"), ("foreground_from", "cond")):
            value = getattr(self, key)
            if value is None:
                object.__setattr__(self, key, implied.get(key, paper))
            elif key in implied and value != implied[key]:
                raise ValueError(f"scfg: reference=True implies {key}={implied[key]!r}, got {value!r}")

    def conditions(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        return {"uncond": Pass("uncond"), "cond": Pass("cond")}

    def recorded_attention(self, adapter):
        layers = self.layers or tuple(adapter.default_attention_layers())
        return layers, tuple(dict.fromkeys(["cond", self.foreground_from]))

    def attention_sink(self):
        return AttentionSink(per_head=self.reference, per_layer=self.reference)

    def combine(self, preds, step):
        u, c = preds["uncond"], preds["cond"]
        if self.reference:
            def maps(name: str) -> torch.Tensor:
                recorded = step.attention[name]
                if recorded.cross_layers is None:
                    raise RuntimeError("scfg reference=True needs per-layer maps (record into SCFG.attention_sink())")
                return layer_token_maps(recorded.cross_layers, recorded.self_layers, step.layout, self.completion,
                                        "code")

            cond = maps("cond")
            fore = cond if self.foreground_from == "cond" else maps("uncond")
            v = reference_prediction(u, c, self.cfg_scale, cond, fore, step.roles[self.foreground_from], step.layout)
        else:
            def maps(name: str) -> torch.Tensor:
                recorded = step.attention[name]
                return role_maps(recorded.cross, recorded.self_attn, step.roles[name], step.layout, self.completion)

            cond = maps("cond")
            fore = cond if self.foreground_from == "cond" else maps("uncond")
            v = scfg_prediction(u, c, self.cfg_scale, cond, fore, step.layout)
        return step.postprocess_cfg(v, c)
