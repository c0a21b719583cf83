"""The figures of step 4: per-method bars with CIs, the CFG x CSLG scale heatmap, each measure against each
method's guidance scale, and the trade-off of two measures across the scales (S-CFG's FID-against-CLIP figure)."""

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


def summary_value(row: dict, measure: str) -> tuple[float, float, float]:
    """``(mean, lo, hi)`` of ``measure`` in a summary row: a per-image measure's ``_mean`` / ``_lo`` / ``_hi``, a
    set-level one's value (no CI); NaN where absent."""
    if f"{measure}_mean" in row:
        return tuple(_nan(row.get(f"{measure}_{stat}")) for stat in ("mean", "lo", "hi"))
    return _nan(row.get(measure)), float("nan"), float("nan")


def scale_lines(summary: Sequence[dict], scale_param: str | None = None) -> dict[str, list[tuple[float | None, dict]]]:
    """The summary rows (the first engine's) as lines across the guidance scale: label -> ``[(scale, row)]`` sorted
    by scale. A method's scale is ``scale_param`` when given, else the first of its params named ``scale`` or
    ``*_scale`` that varies between its settings (``cfg_scale`` last), else such a param with one value; one line
    per model, method and value of the other params that vary (e.g. the layers). A method without a scale param
    gives each setting its own line of one point with scale None."""
    first = [s for s in summary if s["engine"] == summary[0]["engine"]] if summary else []
    methods: dict[tuple[str, str], list[dict]] = {}
    for row in first:
        methods.setdefault((row["model"], row["method"]), []).append(row)
    several_models = len({model for model, _ in methods}) > 1
    lines: dict[str, list[tuple[float | None, dict]]] = {}
    for (model, method), rows in methods.items():
        params = [{k[len("param."):]: v for k, v in r.items() if k.startswith("param.") and v is not None} for r in rows]
        keys = list(dict.fromkeys(k for p in params for k in p))
        varying = [k for k in keys if len({str(p.get(k)) for p in params}) > 1]
        scales = [k for k in keys if k.rsplit(".", 1)[-1] == "scale" or k.endswith("_scale")]
        if scale_param is not None:
            scales = [k for k in scales + keys if k == scale_param][:1]
        scales.sort(key=lambda k: (k not in varying, k.rsplit(".", 1)[-1] == "cfg_scale"))
        scale = scales[0] if scales else None
        prefix = f"{model}: " if several_models else ""
        for p, row in zip(params, rows):
            others = ", ".join(f"{k}={p.get(k)}" for k in varying if k != scale)
            label = prefix + method + (f" [{scale}]" if scale else "") + (f" ({others})" if others else "")
            if scale is None:
                label = prefix + row["label"]
            lines.setdefault(label, []).append((_as_float(p.get(scale)) if scale else None, row))
    return {label: sorted(points, key=lambda point: (point[0] is None, point[0] or 0.0))
            for label, points in lines.items()}


def plot_against_scale(summary: Sequence[dict], measure: str, path: str | os.PathLike,
                       scale_param: str | None = None) -> bool:
    """``measure`` (mean and 95% CI) against each method's guidance scale, one line per ``scale_lines`` line;
    drawn (returns True) when some line has two scales or more."""
    lines = {label: [(x, row) for x, row in points if x is not None] for label, points in scale_lines(
        summary, scale_param).items()}
    lines = {label: points for label, points in lines.items() if points}
    if not any(len(points) > 1 for points in lines.values()):
        return False
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.add_subplot()
    for label, points in lines.items():
        x = [p[0] for p in points]
        mean, lo, hi = np.array([summary_value(row, measure) for _, row in points]).T
        err = np.nan_to_num(np.clip([mean - lo, hi - mean], 0, None))
        ax.errorbar(x, mean, yerr=err, marker="o", capsize=3, label=textwrap.shorten(label, 60))
    ax.set_xlabel("guidance scale (each method's own, in brackets)")
    ax.set_ylabel(f"{measure} (mean, 95% bootstrap CI)")
    ax.legend(fontsize=7)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return True


def plot_tradeoff(summary: Sequence[dict], x_measure: str, y_measure: str, path: str | os.PathLike,
                  scale_param: str | None = None) -> bool:
    """``y_measure`` against ``x_measure``, one curve per ``scale_lines`` line through its scales (each point
    marked with its scale), CIs as error bars in both directions; drawn (returns True) when some setting has both
    values."""
    fig = Figure(figsize=(7, 5), layout="constrained")
    ax = fig.add_subplot()
    drawn = False
    for label, points in scale_lines(summary, scale_param).items():
        values = np.array([summary_value(row, x_measure) + summary_value(row, y_measure) for _, row in points])
        keep = ~np.isnan(values[:, 0]) & ~np.isnan(values[:, 3])
        if not keep.any():
            continue
        drawn = True
        (xm, xl, xh, ym, yl, yh), scales = values[keep].T, [p[0] for p, k in zip(points, keep) if k]
        ax.errorbar(xm, ym, xerr=np.nan_to_num(np.clip([xm - xl, xh - xm], 0, None)),
                    yerr=np.nan_to_num(np.clip([ym - yl, yh - ym], 0, None)), marker="o", capsize=2,
                    label=textwrap.shorten(label, 60))
        for x, y, scale in zip(xm, ym, scales):
            if scale is not None:
                ax.annotate(f"{scale:g}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if not drawn:
        return False
    ax.set_xlabel(x_measure)
    ax.set_ylabel(y_measure)
    ax.set_title(f"{y_measure} against {x_measure} across the guidance scales (marked)", fontsize=10)
    ax.legend(fontsize=7)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return True


def _nan(value: Any) -> float:
    number = _as_float(value)
    return float("nan") if number is None else number
