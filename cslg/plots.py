"""Figures of the contrastive analysis (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from .io import atomic_write  # noqa: E402

MEAN_COLOR = "#009456"
PAIR_COLOR = "#c8c8c8"


def _save(fig, path: Path, dpi: int) -> Path:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    plt.close(fig)
    return path


def _mark_block_groups(ax, groups: Sequence[tuple[str, int]]) -> None:
    """A dashed line and a label where each block list after the first begins (e.g. FLUX's single-stream blocks)."""
    for label, first in list(groups)[1:]:
        ax.axvline(first - 0.5, color="black", linestyle="--", linewidth=0.8)
        ax.text(first - 0.4, ax.get_ylim()[1], " " + label, va="top", fontsize=8)


def plot_layer_change(
    scores: torch.Tensor,
    layer_names: list[str],
    title: str,
    ylabel: str,
    path: Path,
    dpi: int = 300,
    ylim: float | None = None,
    groups: Sequence[tuple[str, int]] = (),
) -> Path:
    """The paper's figure: every pair in light grey, the mean over pairs in green, layers on x.
    ``ylim``: symmetric y-range (upstream used 0.2); by default fitted to the data."""
    fig, ax = plt.subplots(figsize=(8, 5))
    x = list(range(len(layer_names)))
    for row in scores:
        ax.plot(x, row.tolist(), color=PAIR_COLOR, linewidth=0.6, alpha=0.8)
    ax.plot(x, scores.mean(0).tolist(), color=MEAN_COLOR, marker="o", markersize=4, linewidth=2, label="mean over pairs")
    ax.axhline(0, color="black", linewidth=0.5)
    lim = ylim or float(scores.abs().max()) * 1.1 or 0.2
    ax.set_ylim(-lim, lim)
    ax.set_xticks(x)
    ax.set_xticklabels(layer_names, rotation=90 if len(x) > 24 else 0, fontsize=7 if len(x) > 24 else 9)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(loc="lower left")
    _mark_block_groups(ax, groups)
    return _save(fig, path, dpi)


def plot_step_heatmap(
    mean_change: torch.Tensor, layer_names: list[str], title: str, path: Path, dpi: int = 200,
    groups: Sequence[tuple[str, int]] = (),
) -> Path:
    """Layers x steps heatmap of the mean change (diverging colours, 0 in white)."""
    fig, ax = plt.subplots(figsize=(max(6, 0.25 * len(layer_names) + 2), max(4, 0.2 * mean_change.shape[0] + 2)))
    lim = float(mean_change.abs().max()) or 1.0
    im = ax.imshow(mean_change.numpy(), aspect="auto", cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks(range(len(layer_names)))
    ax.set_xticklabels(layer_names, rotation=90, fontsize=7)
    ax.set_xlabel("layer")
    ax.set_ylabel("denoising step")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="mean change in cosine similarity")
    _mark_block_groups(ax, groups)
    return _save(fig, path, dpi)
