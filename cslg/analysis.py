"""Contrastive analysis (step 2): which blocks change the image-token representation most when the
semantic feature is added to the prompt.

With ``s_l`` the cosine similarity between the two prompts' outputs of block ``l`` (and ``s_{-1} = 1``):

- ``difference`` (the paper's metric): ``d_l = s_l - s_{l-1}``;
- ``relative``: ``r_l = (s_l - s_{l-1}) / s_{l-1}``.

A block with a large drop (most negative value, averaged over pairs) pulls the two prompts apart: it
carries the feature. Layers are ranked by that mean, most negative first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .activations import Capture

METRICS = ("difference", "relative")


def first_difference(cosine: torch.Tensor) -> torch.Tensor:
    """``d_l = s_l - s_{l-1}`` along the last (layer) axis, with ``s_{-1} = 1``."""
    prev = torch.cat([torch.ones_like(cosine[..., :1]), cosine[..., :-1]], dim=-1)
    return cosine - prev


def relative_change(cosine: torch.Tensor) -> torch.Tensor:
    """``r_l = (s_l - s_{l-1}) / s_{l-1}`` along the last (layer) axis, with ``s_{-1} = 1``."""
    prev = torch.cat([torch.ones_like(cosine[..., :1]), cosine[..., :-1]], dim=-1)
    return (cosine - prev) / prev


def layer_change(cosine: torch.Tensor, metric: str = "difference") -> torch.Tensor:
    """Per-layer change of ``cosine`` ([..., layers]) under ``metric``."""
    if metric == "difference":
        return first_difference(cosine)
    if metric == "relative":
        return relative_change(cosine)
    raise ValueError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")


def per_pair_scores(cosine: torch.Tensor, metric: str = "difference", step: int | None = None) -> torch.Tensor:
    """[pairs, layers]: the change at ``step`` (negative counts from the end), or averaged over all steps."""
    change = layer_change(cosine.double(), metric)  # [pairs, steps, layers]
    if step is None:
        return change.mean(dim=1)
    steps = cosine.shape[1]
    if not -steps <= step < steps:
        raise ValueError(f"--step {step} is out of range: the capture has {steps} steps")
    return change[:, step]


@dataclass
class Ranking:
    """Layers ranked by mean change over pairs (most negative = most task-relevant first)."""

    layer_names: list[str]
    mean: torch.Tensor  # [layers], in layer order
    std: torch.Tensor
    order: list[int]  # layer indices, best first

    def top(self, k: int) -> list[str]:
        return [self.layer_names[i] for i in self.order[:k]]

    def as_rows(self) -> list[dict]:
        return [
            {"rank": r + 1, "layer": self.layer_names[i], "score": float(self.mean[i]), "std": float(self.std[i])}
            for r, i in enumerate(self.order)
        ]


def rank_layers(scores: torch.Tensor, layer_names: list[str]) -> Ranking:
    """Rank layers by the mean of ``scores`` [pairs, layers] over pairs, ascending."""
    mean = scores.mean(dim=0)
    std = scores.std(dim=0) if scores.shape[0] > 1 else torch.zeros_like(mean)
    order = sorted(range(len(layer_names)), key=lambda i: (float(mean[i]), i))
    return Ranking(layer_names, mean, std, order)


def merge_captures(captures: list[Capture]) -> torch.Tensor:
    """Concatenate the ``cosine`` tensors of several captures of the same model along pairs."""
    first = captures[0]
    for cap in captures[1:]:
        for key in ("layer_names", "steps"):
            if cap.metadata[key] != first.metadata[key]:
                raise ValueError(
                    f"{cap.path}: {key} {cap.metadata[key]} differs from {first.path} ({first.metadata[key]}); "
                    "only captures of the same model and step count can be combined"
                )
    return torch.cat([cap.cosine for cap in captures], dim=0)
