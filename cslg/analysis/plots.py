"""Figures of the contrastive analysis. Drawn on ``matplotlib.figure.Figure`` objects and written as PNG, so no
display and no pyplot backend are needed, and a user's backend choice is left alone."""

from __future__ import annotations

import textwrap
from pathlib import Path
from typing import Sequence

import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from ..io import atomic_write

MEAN_COLOR = "#009456"
PAIR_COLOR = "#c8c8c8"
SUGGESTED_COLOR = "#d62728"
TITLE_WIDTH = 70  # characters per title line


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG atomically."""
    return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, format="png"))


def _mark_block_groups(ax, groups: Sequence[tuple[str, int]]) -> None:
    """A dashed line and a label where each block list after the first begins (e.g. FLUX's single-stream blocks)."""
    for label, first in list(groups)[1:]:
        ax.axvline(first - 0.5, color="black", linestyle="--", linewidth=0.8)
        ax.text(first - 0.4, 0.98, " " + label, va="top", fontsize=8, transform=ax.get_xaxis_transform())


def plot_layer_change(
    scores: torch.Tensor,
    layer_names: list[str],
    title: str,
    ylabel: str,
    path: Path,
    dpi: int = 300,
    ylim: float | None = None,
    groups: Sequence[tuple[str, int]] = (),
    suggested: Sequence[str] = (),
    reference: float | None = 0.0,
) -> Path:
    """The paper's figure: every pair in light grey, the mean over pairs in green with a band of one standard
    deviation, layers on x; the ``suggested`` layers are marked. ``reference``: the unperturbed value, drawn as a
    line (``None``: none); the y-range is symmetric about it, ``ylim`` either side (upstream used 0.2), by default
    fitted to the data."""
    fig = Figure(figsize=(8, 5), layout="constrained")
    ax = fig.add_subplot()
    x = list(range(len(layer_names)))
    for row in scores:
        ax.plot(x, row.tolist(), color=PAIR_COLOR, linewidth=0.6, alpha=0.8)
    mean = scores.mean(0)
    std = scores.std(0) if scores.shape[0] > 1 else torch.zeros_like(mean)
    ax.fill_between(x, (mean - std).tolist(), (mean + std).tolist(), color=MEAN_COLOR, alpha=0.15, linewidth=0,
                    label="± 1 std over pairs")
    ax.plot(x, mean.tolist(), color=MEAN_COLOR, marker="o", markersize=4, linewidth=2, label="mean over pairs")
    marked = [layer_names.index(name) for name in suggested if name in layer_names]
    if marked:
        ax.scatter(marked, [float(mean[i]) for i in marked], s=90, facecolors="none", edgecolors=SUGGESTED_COLOR,
                   linewidths=1.8, zorder=5, label="suggested: " + ", ".join(suggested))
    center = reference or 0.0
    if reference is not None:
        ax.axhline(reference, color="black", linewidth=0.5)
        lim = ylim or float((scores - center).abs().max()) * 1.1 or 0.2
        ax.set_ylim(center - lim, center + lim)
    elif ylim:
        ax.set_ylim(-ylim, ylim)
    ax.set_xticks(x)
    ax.set_xticklabels(layer_names, rotation=90 if len(x) > 24 else 0, fontsize=7 if len(x) > 24 else 9)
    for i in marked:
        ax.get_xticklabels()[i].set_color(SUGGESTED_COLOR)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title("\n".join(textwrap.wrap(title, TITLE_WIDTH)), fontsize=10)
    ax.legend(loc="lower left", fontsize=8)
    _mark_block_groups(ax, groups)
    return save_figure(fig, path, dpi)


def plot_step_heatmap(
    mean_change: torch.Tensor, layer_names: list[str], title: str, path: Path, dpi: int = 200,
    groups: Sequence[tuple[str, int]] = (), label: str = "mean change in cosine similarity", center: float = 0.0,
) -> Path:
    """Layers x steps heatmap of the mean change (diverging colours, ``center`` in white)."""
    width = max(6.0, 0.25 * len(layer_names) + 2)
    fig = Figure(figsize=(width, max(4.0, 0.2 * mean_change.shape[0] + 2.5)), layout="constrained")
    ax = fig.add_subplot()
    lim = float((mean_change - center).abs().max()) or 1.0
    im = ax.imshow(mean_change.numpy(), aspect="auto", cmap="RdBu", vmin=center - lim, vmax=center + lim,
                   interpolation="nearest")
    ax.set_xticks(range(len(layer_names)))
    ax.set_xticklabels(layer_names, rotation=90, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("denoising step")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title("\n".join(textwrap.wrap(title, int(TITLE_WIDTH * width / 8))), fontsize=10)
    fig.colorbar(im, ax=ax, label=label, location="right", shrink=0.9)
    _mark_block_groups(ax, groups)
    return save_figure(fig, path, dpi)
