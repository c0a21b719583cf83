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
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..executor import Pass
from ..families.base import LatentLayout, TextRoles
from .base import Method, canonical_layers

COMPLETION_STEPS = 4  # R: powers of the self-attention averaged in the completion
SMOOTH_SIGMA = 0.5  # 3x3 Gaussian on the token grid, for the maps and for ρ
SCALE_MIN, SCALE_MAX = 0.8, 3.0  # clamp of ρ
SCALE_CAP = 15.0  # ρ <= SCALE_CAP / w
EPS = 1e-8

COMPLETIONS = ("paper", "code")
FOREGROUND_SOURCES = ("cond", "uncond")


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


def smooth(maps: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """3x3 Gaussian smoothing (σ ``sigma``, kernel normalised to sum 1, reflect padding) of ``[..., h, w]``."""
    g = torch.exp(-torch.tensor([-1.0, 0.0, 1.0], device=maps.device) ** 2 / (2 * sigma**2))
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


def scale_map(eta_norm: torch.Tensor, masks: torch.Tensor, foreground: torch.Tensor, w: float) -> torch.Tensor:
    """S-CFG scale map ``ρ`` ``[h, w]`` from ``n = ‖η‖₂`` per token ``[h, w]``, regions ``masks`` ``[K, h, w]``
    and the ``foreground`` ``[h, w]``.

    ``N_i = mean_{m_i} n``, ``N_fg = mean_{foreground} n``, ``ρ_i = N_fg / N_i`` (0 for empty regions),
    ``ρ = Σ_i ρ_i m_i``, clamped to ``[SCALE_MIN, SCALE_MAX]``, capped at ``SCALE_CAP / w``, smoothed.
    """
    area = masks.sum(dim=(-2, -1))
    n_region = (masks * eta_norm).sum(dim=(-2, -1)) / (area + EPS)
    fg = foreground.to(eta_norm.dtype)
    n_fg = (fg * eta_norm).sum() / (fg.sum() + EPS)
    rho_region = torch.where(area > 0, n_fg / (n_region + EPS), torch.zeros_like(n_region))
    rho = (rho_region[:, None, None] * masks).sum(dim=0)
    rho = rho.clamp(SCALE_MIN, SCALE_MAX).clamp_max(SCALE_CAP / w)
    return smooth(rho)


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
    middle third of the first block list). ``completion``: ``"paper"`` or ``"code"``; ``foreground_from``:
    the conditional pass (``"cond"``, paper) or the unconditional one (``"uncond"``, reference code).
    """

    cfg_scale: float = 7.5
    layers: tuple[str, ...] | None = None
    completion: str = "paper"
    foreground_from: str = "cond"
    name = "scfg"

    def __post_init__(self):
        if self.layers is not None:
            object.__setattr__(self, "layers", canonical_layers(self.layers))
        if self.completion not in COMPLETIONS:
            raise ValueError(f"scfg: completion must be one of {COMPLETIONS}, got {self.completion!r}")
        if self.foreground_from not in FOREGROUND_SOURCES:
            raise ValueError(f"scfg: foreground_from must be one of {FOREGROUND_SOURCES}, got {self.foreground_from!r}")

    def referenced_layers(self):
        return self.layers or ()

    def rows(self, request):
        return {"uncond": request.negative_prompt, "cond": request.prompt}

    def passes(self, step):
        return {"uncond": Pass("uncond"), "cond": Pass("cond")}

    def recorded_attention(self, adapter):
        layers = self.layers or tuple(adapter.default_attention_layers())
        return layers, tuple(dict.fromkeys(["cond", self.foreground_from]))

    def combine(self, preds, step):
        def maps(name: str) -> torch.Tensor:
            recorded = step.attention[name]
            return role_maps(recorded.cross, recorded.self_attn, step.roles[name], step.layout, self.completion)

        cond = maps("cond")
        fore = cond if self.foreground_from == "cond" else maps("uncond")
        return scfg_prediction(preds["uncond"], preds["cond"], self.cfg_scale, cond, fore, step.layout)

    def params(self):
        return {
            "cfg_scale": self.cfg_scale,
            "layers": list(self.layers) if self.layers else "middle third of the first block list",
            "completion": self.completion,
            "foreground_from": self.foreground_from,
            "completion_steps": COMPLETION_STEPS,
            "smooth_sigma": SMOOTH_SIGMA,
            "scale_clamp": [SCALE_MIN, SCALE_MAX],
            "scale_cap": SCALE_CAP,
        }

    @classmethod
    def from_grid(cls, s):
        return [cls(cfg_scale=w, layers=s.scfg_layers) for w in s.cfg_scales]
