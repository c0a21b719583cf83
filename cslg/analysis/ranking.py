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

from ..capture.files import Capture
from ..io import atomic_write_json
from ..options import BASELINES, CHANGE_METRICS
from .agreement import DEFAULT_FINDER, pairs_digest


def _previous(cosine: torch.Tensor, baseline: torch.Tensor | None) -> torch.Tensor:
    """``s_{l-1}`` for every layer: the baseline ``s_{-1}`` (``cosine[..., 0]``-shaped; ``None``: 1), then the layers."""
    first = torch.ones_like(cosine[..., :1]) if baseline is None else baseline[..., None].to(cosine.dtype)
    return torch.cat([first, cosine[..., :-1]], dim=-1)


def first_difference(cosine: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """``d_l = s_l - s_{l-1}`` along the last (layer) axis; ``s_{-1}`` is ``baseline`` (default 1)."""
    return cosine - _previous(cosine, baseline)


def relative_change(cosine: torch.Tensor, baseline: torch.Tensor | None = None) -> torch.Tensor:
    """``r_l = (s_l - s_{l-1}) / s_{l-1}`` along the last (layer) axis; ``s_{-1}`` is ``baseline`` (default 1)."""
    prev = _previous(cosine, baseline)
    return (cosine - prev) / prev


def layer_change(cosine: torch.Tensor, metric: str = "difference", baseline: torch.Tensor | None = None) -> torch.Tensor:
    """Per-layer change of ``cosine`` ([..., layers]) under ``metric``, from ``baseline`` (``cosine[..., 0]``-shaped)."""
    if metric == "difference":
        return first_difference(cosine, baseline)
    if metric == "relative":
        return relative_change(cosine, baseline)
    raise ValueError(f"--metric must be one of {', '.join(CHANGE_METRICS)}, got {metric!r}")


def per_pair_scores(cosine: torch.Tensor, metric: str = "difference", step: int | None = None,
                    baseline: torch.Tensor | None = None) -> torch.Tensor:
    """[pairs, layers]: the change at ``step`` (negative counts from the end), or averaged over all steps;
    ``baseline`` [pairs, steps]: the similarity before the first block (default 1)."""
    change = layer_change(cosine.double(), metric, None if baseline is None else baseline.double())
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
    """Concatenate the ``cosine`` tensors of several captures of the same model and measurement along pairs."""
    first = captures[0]
    defaults = {"site": "block", "compare": "cond", "finder": DEFAULT_FINDER}
    for cap in captures[1:]:
        for key in ("finder", "family", "model", "layer_names", "steps", "site", "compare"):
            theirs, ours = cap.metadata.get(key, defaults.get(key)), first.metadata.get(key, defaults.get(key))
            if theirs != ours:
                raise ValueError(
                    f"{cap.path}: {key} {theirs} differs from {first.path} ({ours}); "
                    "only captures of the same finder, model, step count and site can be combined"
                )
    for i, cap in enumerate(captures):
        for other in captures[:i]:
            if cap.cosine.shape == other.cosine.shape and torch.equal(cap.cosine, other.cosine):
                raise ValueError(f"{cap.path}: the same capture as {other.path} (given twice, its pairs would count "
                                 "twice)")
    return torch.cat([cap.cosine for cap in captures], dim=0)


def merge_baselines(captures: list[Capture], baseline: str) -> torch.Tensor | None:
    """``s_{-1}`` [pairs, steps] of ``captures``: ``"input"``, the similarity of the image tokens entering the first
    block; ``"one"``, 1 (``None``), as the paper."""
    if baseline not in BASELINES:
        raise ValueError(f"--baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")
    if baseline == "one":
        return None
    for cap in captures:
        if cap.input_cosine is None:
            raise ValueError(f"{cap.path}: no input similarity (captured by an older version): use --baseline one")
    return torch.cat([cap.input_cosine for cap in captures], dim=0)


YLABELS = {"difference": "change in cosine similarity", "relative": "relative change in cosine similarity"}


def captures_digest(captures: list[Capture]) -> str | None:
    """``pairs_digest`` of the prompt pairs of ``captures`` pooled; ``None`` when one records no prompts."""
    prompts = [cap.metadata.get("prompts") for cap in captures]
    return None if any(p is None for p in prompts) else pairs_digest([pair for p in prompts for pair in p])


def analyse(captures: list[Capture], out: str | Path, metric: str = "difference", step: int | None = None,
            top_k: int = 3, title: str | None = None, dpi: int = 300, ylim: float | None = None,
            baseline: str = "input") -> dict:
    """Rank the layers of ``captures`` (one model) and write ``out/layers.json``, the per-layer figure and the
    layers x steps heatmap. Returns the ``layers.json`` content (its path under ``"path"``)."""
    from .plots import plot_layer_change, plot_step_heatmap

    cosine = merge_captures(captures)
    base = merge_baselines(captures, baseline)
    first = captures[0]
    names, groups = first.layer_names, first.metadata.get("block_groups", ())
    model = title or first.model.rstrip("/").split("/")[-1]
    scores = per_pair_scores(cosine, metric, step, base)
    ranking = rank_layers(scores, names)
    out = Path(out)
    meta = first.metadata
    when = ("mean over steps" if step is None else f"step {step}") + (
        f", baseline {baseline}\nsite {meta.get('site', 'block')}, {meta.get('trajectory', 'independent')} "
        f"trajectories, {int(cosine.shape[0])} pairs")
    k = min(top_k, len(names))
    figure = plot_layer_change(
        scores, names, f"{model}: {YLABELS[metric].capitalize()} per Layer ({when})",
        YLABELS[metric], out / f"{model}_{metric}_per_layer.png", dpi, ylim, groups, ranking.top(k),
    )
    heatmap = plot_step_heatmap(
        layer_change(cosine.double(), metric, None if base is None else base.double()).mean(0), names,
        f"{model}: {YLABELS[metric]} per layer and step", out / f"{model}_{metric}_heatmap.png", groups=groups,
        label=f"mean {YLABELS[metric]}",
    )
    result = {
        "finder": meta.get("finder", DEFAULT_FINDER),
        "model": first.model,
        "family": first.metadata["family"],
        "captures": [str(c.path) for c in captures],
        "pairs": int(cosine.shape[0]),
        "pairs_sha1": captures_digest(captures),
        "metric": metric,
        "baseline": baseline,
        "site": first.metadata.get("site", "block"),
        "trajectory": first.metadata.get("trajectory", "independent"),
        "step": "all" if step is None else step,
        "top_k": k,
        "suggested": ranking.top(k),
        "neutral": 0.0,  # the score of a block that changes nothing (the zero of the layer-weight gains)
        "layer_names": names,
        "block_groups": [list(g) for g in groups],
        "ranking": ranking.as_rows(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = atomic_write_json(out / "layers.json", result)
    return {**result, "path": str(path), "figures": [str(figure), str(heatmap)]}
