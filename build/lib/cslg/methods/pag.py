"""Perturbed-attention guidance (Ahn et al. 2024, arXiv 2403.17377) on any family's blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..guidance.passes import IDENTITY_ATTENTION
from .base import cfg_scale_option, start_option, stop_option
from .cslg import CSLG
from .schema import option


@dataclass(frozen=True)
class PAG(CSLG):
    """``v = u + w (c - u) + s (c - c_ptb)`` at steps ``N*start <= i < N*stop``, CFG (or ``c``) outside.

    ``c_ptb`` is the conditional pass with identity attention in ``layers``: each image query attends only to
    itself among the image keys (text keys stay visible in MMDiT joint attention, as diffusers'
    ``PAGJointAttnProcessor2_0``; a cross-attention DiT's self-attention returns its values). With ``weights``
    each layer gets its own perturbed pass, averaged with the weights. ``layers`` default: the family's diffusers
    PAG pipeline default (SD3, PixArt: block 1).
    """

    layers: tuple[str, ...] | None = option(None, "blocks with identity attention (default: the family's diffusers "
                                            "PAG default, else the --layers given)", fallback="--layers",
                                            family_default="pag_default_layers")
    scale: float = option(3.0, "perturbed-attention guidance scale s", low=0, axis=True)
    cfg_scale: float | None = cfg_scale_option()
    start: float = start_option()
    stop: float = stop_option()
    weights: tuple[float, ...] | None = option(None, "per-layer weights: one perturbed pass per layer, averaged",
                                               low=0)
    name = "pag"
    title = "perturbed-attention guidance: identity attention in the chosen blocks"
    perturbation: ClassVar[str] = IDENTITY_ATTENTION
