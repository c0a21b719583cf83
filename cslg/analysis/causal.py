"""Scores of the causal finders (``ablation``, ``patching``) from their raw measures.

With ``n`` the negative prompt's prediction, ``p`` the positive prompt's and ``p_l`` the positive prompt's with block
``l`` perturbed, a score is a measure ``m_l`` (``distance`` ``‖n - p_l‖₂`` or ``cosine`` ``cos(n, p_l)``, with
reference ``m = ‖n - p‖₂`` or ``cos(n, p)``) normalised as upstream does:

- raw: ``m_l``;
- ``-ratio``: ``m_l / (m + 1e-8)``;
- ``-difference``: ``m_l - m``;
- with ``-drop``: the first difference along depth ``s_l - s_{l-1}``, where ``s_{-1}`` is the unperturbed value
  (the normalisation applied to ``m`` itself: ``m``, ``m / (m + 1e-8)`` or 0).

A block whose perturbation brings the positive prediction toward the negative one carries the feature: distance
scores rank ascending (smallest first), cosine scores descending (largest first). Ablation's default,
``distance-ratio``, is upstream's. Patching replaces the residual stream, so its effect is cumulative (every block
from the one that writes the feature on gives a small distance); its default, ``distance-ratio-drop``, ranks the
block where the distance falls.
"""

from __future__ import annotations

import torch

from ..capture.files import Capture
from ..options import CAUSAL_SCORES

EPS = 1e-8  # upstream's, against a zero reference


def normalise(value: torch.Tensor, reference: torch.Tensor, norm: str) -> torch.Tensor:
    """``value`` (``[..., layers]``) raw, as a ratio to or a difference from ``reference`` (``[...]``)."""
    ref = reference[..., None]
    if norm == "ratio":
        return value / (ref + EPS)
    if norm == "difference":
        return value - ref
    return value


def parse_score(score: str) -> tuple[str, str, bool]:
    """``(measure, normalisation, drop)`` of a score name such as ``distance-ratio-drop``."""
    if score not in CAUSAL_SCORES:
        raise ValueError(f"--score must be one of {', '.join(CAUSAL_SCORES)}, got {score!r}")
    parts = score.split("-")
    drop = parts[-1] == "drop"
    parts = parts[:-1] if drop else parts
    return parts[0], parts[1] if len(parts) > 1 else "raw", drop


def descending(score: str) -> bool:
    """Whether the best blocks have the largest ``score`` (cosine scores)."""
    return parse_score(score)[0] == "cosine"


def causal_change(value: torch.Tensor, reference: torch.Tensor, score: str) -> torch.Tensor:
    """The score ``[..., layers]`` of the measure ``value`` ``[..., layers]`` with its reference ``[...]``."""
    _, norm, drop = parse_score(score)
    values = normalise(value.double(), reference.double(), norm)
    if not drop:
        return values
    start = normalise(reference.double()[..., None], reference.double(), norm)
    return values - torch.cat([start, values[..., :-1]], dim=-1)


def causal_measure(capture: Capture, score: str) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m_l [pairs, steps, layers], m [pairs, steps])`` of ``capture`` for ``score``'s measure."""
    if parse_score(score)[0] == "distance":
        return capture.distance, capture.reference_distance
    return capture.cosine, capture.reference_cosine
