"""Contrastive analysis (step 2): which blocks change the image-token representation most when the
semantic feature is added to the prompt.

With ``s_l`` the cosine similarity between the two prompts' outputs of block ``l`` (and ``s_{-1} = 1``):

- ``difference`` (the paper's metric): ``d_l = s_l - s_{l-1}``;
- ``relative``: ``r_l = (s_l - s_{l-1}) / s_{l-1}``.

A block with a large drop (most negative value, averaged over pairs) pulls the two prompts apart: it
carries the feature. Layers are ranked by that mean, most negative first. Captures of the causal finders
(``ablation``, ``patching``) are ranked by their own scores (``cslg.analysis.causal``).
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

import torch

from ..capture.files import Capture
from ..io import atomic_write_json
from ..options import BASELINES, CHANGE_METRICS, DEFAULT_SCORES
from .causal import causal_change, causal_measure, descending, parse_score
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
    return at_step(layer_change(cosine.double(), metric, None if baseline is None else baseline.double()), step)


def at_step(change: torch.Tensor, step: int | None) -> torch.Tensor:
    """[pairs, layers] of ``change`` [pairs, steps, layers]: at ``step`` (negative counts from the end) or the mean
    over steps."""
    if step is None:
        return change.mean(dim=1)
    steps = change.shape[1]
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


def rank_layers(scores: torch.Tensor, layer_names: list[str], descending: bool = False) -> Ranking:
    """Rank layers by the mean of ``scores`` [pairs, layers] over pairs, ascending (``descending``: largest
    first)."""
    mean = scores.mean(dim=0)
    std = scores.std(dim=0) if scores.shape[0] > 1 else torch.zeros_like(mean)
    sign = -1.0 if descending else 1.0
    order = sorted(range(len(layer_names)), key=lambda i: (sign * float(mean[i]), i))
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
CAUSAL_LABELS = {"distance": "‖n - p_l‖₂", "cosine": "cos(n, p_l)"}
CAUSAL_NORMS = {"ratio": " / reference", "difference": " - reference", "raw": ""}


def causal_label(score: str) -> str:
    """The y-axis label of a causal score, e.g. ``‖n - p_l‖₂ / reference, change along depth``."""
    measure, norm, drop = parse_score(score)
    return CAUSAL_LABELS[measure] + CAUSAL_NORMS[norm] + (", change along depth" if drop else "")


def _scores(captures: list[Capture], metric: str, step: int | None, baseline: str, score: str | None):
    """``(per-step change [pairs, steps, layers], score name, label, descending, reference line)`` of captures of
    one finder."""
    finder = captures[0].finder
    if finder == "contrast":
        if score is not None:
            raise ValueError(f"--score {score}: scores are for ablation and patching captures; "
                             f"{captures[0].path} is a contrast capture (rank it with --metric / --baseline)")
        base = merge_baselines(captures, baseline)
        change = layer_change(merge_captures(captures).double(), metric, None if base is None else base.double())
        return change, metric, YLABELS[metric], False, 0.0
    score = score or DEFAULT_SCORES[finder]
    _, norm, drop = parse_score(score)
    merge_captures(captures)  # the same finder, model and steps
    measures = [causal_measure(c, score) for c in captures]
    change = causal_change(torch.cat([m for m, _ in measures]), torch.cat([r for _, r in measures]), score)
    reference = 1.0 if norm == "ratio" and not drop else 0.0 if (drop or norm == "difference") else None
    return change, score, causal_label(score), descending(score), reference


def rank_captures(captures: list[Capture], metric: str = "difference", step: int | None = None,
                  baseline: str = "input", score: str | None = None) -> tuple[Ranking, str]:
    """The ranking of ``captures`` (one finder) and the name of the score it ranks by."""
    change, score, _, desc, _ = _scores(captures, metric, step, baseline, score)
    return rank_layers(at_step(change, step), captures[0].layer_names, desc), score


def captures_digest(captures: list[Capture]) -> str | None:
    """``pairs_digest`` of the prompt pairs of ``captures`` pooled; ``None`` when one records no prompts."""
    prompts = [cap.metadata.get("prompts") for cap in captures]
    return None if any(p is None for p in prompts) else pairs_digest([pair for p in prompts for pair in p])


def analyse(captures: list[Capture], out: str | Path, metric: str = "difference", step: int | None = None,
            top_k: int = 3, title: str | None = None, dpi: int = 300, ylim: float | None = None,
            baseline: str = "input", score: str | None = None) -> dict:
    """Rank the layers of ``captures`` (one model, one finder) and write ``out/layers.json``, the per-layer figure
    and the layers x steps heatmap. Returns the ``layers.json`` content (its path under ``"path"``). ``metric`` /
    ``baseline`` rank contrast captures, ``score`` (default: the finder's, ``cslg.options.DEFAULT_SCORES``) those of
    the causal finders."""
    from .plots import plot_layer_change, plot_step_heatmap

    first = captures[0]
    finder = first.finder
    change, score, label, desc, reference = _scores(captures, metric, step, baseline, score)
    names, groups = first.layer_names, first.metadata.get("block_groups", ())
    model = title or first.model.rstrip("/").split("/")[-1]
    scores = at_step(change, step)
    ranking = rank_layers(scores, names, desc)
    out = Path(out)
    meta = first.metadata
    when = "mean over steps" if step is None else f"step {step}"
    if finder == "contrast":
        when += (f", baseline {baseline}\nsite {meta.get('site', 'block')}, {meta.get('trajectory', 'independent')} "
                 f"trajectories, {int(change.shape[0])} pairs")
        stem, heading = f"{model}_{metric}", f"{model}, contrast finder: {label.capitalize()} per Layer"
    else:
        when += f", along the negative prompt's trajectory, {int(change.shape[0])} pairs"
        stem, heading = f"{model}_{finder}_{score}", f"{model}, {finder} finder: {label} per layer"
    k = min(top_k, len(names))
    figure = plot_layer_change(
        scores, names, f"{heading} ({when})", label, out / f"{stem}_per_layer.png", dpi, ylim, groups,
        ranking.top(k), reference=reference,
    )
    heatmap = plot_step_heatmap(
        change.mean(0), names, f"{heading} and step", out / f"{stem}_heatmap.png", groups=groups,
        label=f"mean {label}", center=reference or 0.0,
    )
    result = {
        "model": first.model,
        "family": first.metadata["family"],
        "finder": finder,
        "captures": [str(c.path) for c in captures],
        "pairs": int(change.shape[0]),
        "pairs_sha1": captures_digest(captures),
        "score": score,
        **({"metric": metric, "baseline": baseline, "site": first.metadata.get("site", "block")}
           if finder == "contrast" else {}),
        "trajectory": first.metadata.get("trajectory", "independent"),
        "order": "descending" if desc else "ascending",
        "step": "all" if step is None else step,
        "top_k": k,
        "suggested": ranking.top(k),
        # the score of a block that changes nothing (the zero of the layer-weight gains); raw causal scores have none
        **({"neutral": reference} if reference is not None else {}),
        "layer_names": names,
        "block_groups": [list(g) for g in groups],
        "ranking": ranking.as_rows(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    path = atomic_write_json(out / "layers.json", result)
    return {**result, "path": str(path), "figures": [str(figure), str(heatmap)]}
