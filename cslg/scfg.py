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

Background tokens stand in for the UNet's start token: SD3 the CLIP ``<sot>``, FLUX the T5 padding tokens
(see ``cslg.attention.text_roles``). Deviations from the reference code, as flags: ``completion="code"``
computes ``(S + 3 S²)/4 · C``; ``foreground_from="uncond"`` takes the foreground from the negative lane.
The completion runs on the block-averaged maps (the reference completes every layer and averages after).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F

from .attention import AttentionRecorder, TextRoles, record_attention, text_roles
from .denoiser import Denoiser, Pass
from .guidance import GuidanceMethod, Request

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


# Layouts -----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TokenGrid:
    """The ``(h, w)`` grid of image tokens behind a velocity (tokens in row-major order, as the attention sees them).

    SD3: velocity ``[B, C, H, W]``, each token a ``patch x patch`` latent patch. FLUX (``patch=None``):
    packed velocity ``[B, h*w, D]``, one row per token.
    """

    h: int
    w: int
    patch: int | None

    @classmethod
    def of(cls, denoiser: Denoiser, velocity: torch.Tensor) -> TokenGrid:
        if velocity.ndim == 4:
            p = denoiser.transformer.config.patch_size
            return cls(velocity.shape[-2] // p, velocity.shape[-1] // p, p)
        ids = denoiser.img_ids  # (0, row, col) per packed token
        return cls(int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1, None)

    def token_norms(self, x: torch.Tensor) -> torch.Tensor:
        """``‖x‖₂`` over each token's values (SD3: channels x patch; FLUX: the packed row): ``[B, h, w]``."""
        if self.patch is None:
            return x.float().norm(dim=-1).reshape(-1, self.h, self.w)
        p = self.patch
        patches = x.float().reshape(x.shape[0], x.shape[1], self.h, p, self.w, p)
        return patches.square().sum(dim=(1, 3, 5)).sqrt()

    def to_velocity(self, rho: torch.Tensor) -> torch.Tensor:
        """A token map ``[B, h, w]`` in a shape that broadcasts against the velocity."""
        if self.patch is None:
            return rho.reshape(rho.shape[0], -1, 1)
        return rho.repeat_interleave(self.patch, dim=-2).repeat_interleave(self.patch, dim=-1)[:, None]


def role_maps(
    cross: torch.Tensor, self_attn: torch.Tensor, roles: TextRoles, grid: TokenGrid, completion: str
) -> torch.Tensor:
    """Completed, smoothed maps ``[2 + K, h, w]`` of one lane: background, all other tokens, then
    each content token (maps of several tokens are summed before the completion, which is linear)."""
    groups = [roles.background, roles.others] + [(i,) for i in roles.content]
    select = torch.zeros(cross.shape[-1], len(groups), device=cross.device)
    for j, tokens in enumerate(groups):
        select[list(tokens), j] = 1.0
    maps = complete(cross @ select, self_attn, completion)  # [N, 2 + K]
    return smooth(maps.T.reshape(len(groups), grid.h, grid.w))


def default_layers(transformer) -> list[str]:
    """The middle third of the double-stream / joint blocks (S-CFG's UNet recipe used the middle resolutions)."""
    n = len(transformer.transformer_blocks)
    return [str(i) for i in range(n // 3, max(n // 3 + 1, 2 * n // 3))]


# The method ---------------------------------------------------------------------------------------------
@dataclass
class SCFG(GuidanceMethod):
    """S-CFG: ``v = u + w ρ ⊙ (c - u)`` every step; on FLUX this modulates true CFG with the negative prompt.

    ``layers``: blocks whose attention is recorded (default ``default_layers``: the middle third of the
    double-stream / joint blocks). ``completion``: ``"paper"`` or ``"code"``; ``foreground_from``: the
    conditional lane (``"cond"``, paper) or the negative lane (``"uncond"``, reference code).
    """

    cfg_scale: float = 7.5
    layers: tuple[str, ...] | None = None
    completion: str = "paper"
    foreground_from: str = "cond"
    name = "scfg"
    _prompts: tuple[str, str] | None = field(default=None, init=False, repr=False, compare=False)
    _run: tuple[Denoiser, AttentionRecorder] | None = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        if self.completion not in COMPLETIONS:
            raise ValueError(f"scfg: completion must be one of {COMPLETIONS}, got {self.completion!r}")
        if self.foreground_from not in FOREGROUND_SOURCES:
            raise ValueError(f"scfg: foreground_from must be one of {FOREGROUND_SOURCES}, got {self.foreground_from!r}")

    @property
    def lanes(self) -> tuple[int, ...]:
        """Recorded lanes: 0 = negative, 1 = prompt (the passes never split)."""
        return (0, 1) if self.foreground_from == "uncond" else (1,)

    def rows(self, request: Request) -> list[str]:
        self._prompts = (request.negative_prompt, request.prompt)  # their token roles are needed per step
        return [request.negative_prompt, request.prompt]

    def passes(self, step, num_steps, num_rows):
        return [Pass(0), Pass(1)]

    @contextmanager
    def context(self, denoiser: Denoiser) -> Iterator[None]:
        layers = self.layers or default_layers(denoiser.transformer)
        with record_attention(denoiser, layers, self.lanes) as recorder:
            self._run = (denoiser, recorder)
            try:
                yield
            finally:
                self._run = None

    def combine(self, preds, step, num_steps):
        if self._run is None or self._prompts is None:
            raise RuntimeError("SCFG needs rows(request) and then its context(denoiser) around the sampling run")
        denoiser, recorder = self._run
        maps = recorder.take()
        u, c = preds[0:1], preds[1:2]
        grid = TokenGrid.of(denoiser, u)
        text_len = maps.cross.shape[-1]

        def lane_maps(row: int) -> torch.Tensor:
            lane = self.lanes.index(row)
            roles = text_roles(denoiser.pipe, self._prompts[row], text_len)
            return role_maps(maps.cross[lane], maps.self_attn[lane], roles, grid, self.completion)

        cond = lane_maps(1)
        masks = region_masks(torch.cat([cond[:1], cond[2:]]))  # background + content tokens
        fore = cond if self.foreground_from == "cond" else lane_maps(0)
        foreground = foreground_mask(fore[0], fore[1])
        rho = scale_map(grid.token_norms(c - u)[0], masks, foreground, self.cfg_scale)
        return guide(u, c, self.cfg_scale, grid.to_velocity(rho[None]).to(u.dtype))

    def params(self):
        return {
            "cfg_scale": self.cfg_scale,
            "layers": list(self.layers) if self.layers else "middle third of the double-stream blocks",
            "completion": self.completion,
            "foreground_from": self.foreground_from,
            "completion_steps": COMPLETION_STEPS,
            "smooth_sigma": SMOOTH_SIGMA,
            "scale_clamp": [SCALE_MIN, SCALE_MAX],
            "scale_cap": SCALE_CAP,
        }
