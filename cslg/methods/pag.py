"""Perturbed-attention guidance (Ahn et al. 2024, arXiv 2403.17377) on any family's blocks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..executor import IDENTITY_ATTENTION
from .base import check_scale
from .cslg import CSLG


@dataclass(frozen=True)
class PAG(CSLG):
    """``v = u + w (c - u) + s (c - c_ptb)`` at steps ``N*start <= i < N*stop``, CFG (or ``c``) outside.

    ``c_ptb`` is the conditional pass with identity attention in ``layers``: each image query attends only to
    itself among the image keys (text keys stay visible in MMDiT joint attention, as diffusers'
    ``PAGJointAttnProcessor2_0``; a cross-attention DiT's self-attention returns its values). With ``weights``
    each layer gets its own perturbed pass, averaged with the weights.
    """

    name = "pag"
    perturbation: ClassVar[str] = IDENTITY_ATTENTION
    scale_key: ClassVar[str] = "pag_scale"

    @classmethod
    def from_grid(cls, s):
        layers = s.pag_layers or s.layers
        if not layers:
            raise ValueError("pag needs layers: --pag-layers, --layers or --layers-from (no default for this family)")
        scales = [check_scale(x, "--pag-scales") for x in s.pag_scales]
        return [cls(layers, scale, w) for w in s.cfg_scales for scale in scales]
