"""Contrastive analysis (step 2): which blocks change the image-token representation most when the
semantic feature is added to the prompt.

With ``s_l`` the cosine similarity between the two prompts' outputs of block ``l`` (and ``s_{-1} = 1``):

- ``difference`` (the paper's metric): ``d_l = s_l - s_{l-1}``;
- ``relative``: ``r_l = (s_l - s_{l-1}) / s_{l-1}``.

A block with a large drop (most negative value, averaged over pairs) pulls the two prompts apart: it
carries the feature. Layers are ranked by that mean, most negative first.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import torch

from .activations import Capture
from .io import atomic_write_json

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


YLABELS = {"difference": "change in cosine similarity", "relative": "relative change in cosine similarity"}


def analyse(captures: list[Capture], out: str | Path, metric: str = "difference", step: int | None = None,
            top_k: int = 3, title: str | None = None, dpi: int = 300, ylim: float | None = None) -> dict:
    """Rank the layers of ``captures`` (one model) and write ``out/layers.json``, the per-layer figure and the
    layers x steps heatmap. Returns the ``layers.json`` content (its path under ``"path"``)."""
    from .plots import plot_layer_change, plot_step_heatmap

    cosine = merge_captures(captures)
    first = captures[0]
    names, groups = first.layer_names, first.metadata.get("block_groups", ())
    model = title or first.model.rstrip("/").split("/")[-1]
    scores = per_pair_scores(cosine, metric, step)
    ranking = rank_layers(scores, names)
    out = Path(out)
    when = "mean over steps" if step is None else f"step {step}"
    figure = plot_layer_change(
        scores, names, f"{model}: {YLABELS[metric].capitalize()} per Layer ({when})",
        YLABELS[metric], out / f"{model}_{metric}_per_layer.png", dpi, ylim, groups,
    )
    heatmap = plot_step_heatmap(
        layer_change(cosine.double(), metric).mean(0), names,
        f"{model}: {YLABELS[metric]} per layer and step", out / f"{model}_{metric}_heatmap.png", groups=groups,
    )
    k = min(top_k, len(names))
    result = {
        "model": first.model,
        "family": first.metadata["family"],
        "captures": [str(c.path) for c in captures],
        "pairs": int(cosine.shape[0]),
        "metric": metric,
        "step": "all" if step is None else step,
        "top_k": k,
        "suggested": ranking.top(k),
        "ranking": ranking.as_rows(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = atomic_write_json(out / "layers.json", result)
    return {**result, "path": str(path), "figures": [str(figure), str(heatmap)]}
