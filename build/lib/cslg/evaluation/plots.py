"""The figures of step 4: per-method bars with CIs and the CFG x CSLG scale heatmap."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from matplotlib.figure import Figure

from ..io import atomic_write

BAR_METRICS = ("ocr_similarity", "word_f1")
HEATMAP_METHOD, HEATMAP_ROWS, HEATMAP_COLS = "cslg", "cfg_scale", "scale"
LEGACY_COLS = "cslg_scale"  # what manifests of cslg 0.2 called the cslg scale


def plot_methods(summary: Sequence[dict], path: str | os.PathLike) -> Path:
    """Horizontal bars of ``BAR_METRICS`` per method/setting (first on top), error bars = 95% bootstrap CI."""
    labels = [textwrap.fill(s["label"], 45) for s in summary]
    y = np.arange(len(summary))
    height = 0.8 / len(BAR_METRICS)
    rows_of_text = max(sum(label.count("\n") + 1 for label in labels), len(summary) * len(BAR_METRICS))
    fig = Figure(figsize=(8, 1.5 + 0.45 * rows_of_text), layout="constrained")
    ax = fig.add_subplot()
    for k, metric in enumerate(BAR_METRICS):
        mean, lo, hi = (np.array([s[f"{metric}_{stat}"] for s in summary], float) for stat in ("mean", "lo", "hi"))
        err = np.nan_to_num(np.clip([mean - lo, hi - mean], 0, None))
        ax.barh(y + (k - (len(BAR_METRICS) - 1) / 2) * height, mean, height, xerr=err, capsize=3, label=metric)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 1.05)
    ax.set_xlabel("mean score, 95% bootstrap CI")
    fig.legend(loc="outside upper center", ncol=len(BAR_METRICS))
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))


def heatmap_grid(rows: Sequence[dict]) -> tuple[list[float], list[float], np.ndarray, int] | None:
    """``(cfg scales, cslg scales, mean ocr_similarity [cfg, cslg], number of layer sets)`` of the scored ``cslg``
    rows, or ``None`` unless both scales take several values."""
    cslg = [r for r in rows if r["method"] == HEATMAP_METHOD and not r["error"]]
    points = [
        (_as_float(r.get(f"param.{HEATMAP_ROWS}")),
         _as_float(r.get(f"param.{HEATMAP_COLS}", r.get(f"param.{LEGACY_COLS}"))), r["ocr_similarity"])
        for r in cslg
    ]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    row_values, col_values = sorted({p[0] for p in points}), sorted({p[1] for p in points})
    if len(row_values) < 2 or len(col_values) < 2:
        return None
    sums, counts = np.zeros((len(row_values), len(col_values))), np.zeros((len(row_values), len(col_values)))
    for r, c, value in points:
        sums[row_values.index(r), col_values.index(c)] += value
        counts[row_values.index(r), col_values.index(c)] += 1
    grid = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    return row_values, col_values, grid, len({r.get("param.layers") for r in cslg})


def plot_heatmap(rows: Sequence[dict], path: str | os.PathLike) -> bool:
    """The ``heatmap_grid`` of ``rows`` as a figure (returns whether one was drawn); several layer sets are averaged,
    as the title says."""
    found = heatmap_grid(rows)
    if found is None:
        return False
    row_values, col_values, grid, layer_sets = found
    fig = Figure(figsize=(1.1 * len(col_values) + 2.5, 0.8 * len(row_values) + 2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
    ax.set_xticks(range(len(col_values)), [f"{v:g}" for v in col_values])
    ax.set_yticks(range(len(row_values)), [f"{v:g}" for v in row_values])
    ax.set_xlabel(f"{HEATMAP_METHOD} scale s")
    ax.set_ylabel("CFG scale w")
    averaged = f"\n(mean over {layer_sets} layer sets)" if layer_sets > 1 else ""
    ax.set_title(f"{HEATMAP_METHOD}: mean OCR similarity{averaged}", fontsize=10)
    fig.colorbar(image, ax=ax, label="OCR similarity")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return True


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None
