"""The tables of step 4: a summary per engine, model, method and setting with bootstrap CIs, the engines' per-image
agreement, per-prompt means, and CSV writing."""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from ..io import atomic_write
from .metrics import OCR_METRICS, bootstrap_ci, bootstrap_f_measure, text_agreement, verdict_agreement
from .records import setting_params

# Summary column of MARIO-Eval's F-measure: f_measure of the mean word precision and recall.
MARIO_F_MEASURE = "word_f_measure"
# Per-image agreement between engines (agreement.csv, and their means in summary.csv).
AGREEMENT = ("text_agreement", "exact_match_agreement")
# Per-engine columns of agreement.csv, as ``<column>.<engine>``.
AGREEMENT_COLUMNS = ("ocr_text", "exact_match", "ocr_similarity")


def summarize(rows: Sequence[dict], n_bootstrap: int = 1000, seed: int = 0) -> list[dict]:
    """One summary.csv row per (engine, model, method, setting), in order of first appearance;
    with several engines, each row also carries that setting's engine agreement."""
    settings = {_group_key(row): _setting_of(row) for row in rows}
    setting_keys = sorted({key for setting in settings.values() for key in setting})
    labels = _engine_labels(rows)
    agreed = _groups(agreement(rows)) if len(_engine_names(rows)) > 1 else {}
    summary = []
    for (engine, *key), members in _groups(rows, by_engine=True).items():
        key = tuple(key)
        scored = [r for r in members if not r["error"]]
        out: dict[str, Any] = {"engine": engine, "model": key[0], "method": key[1],
                               "label": labels[(engine, *key)], "setting": key[2]}
        out.update({f"param.{k}": settings[key].get(k) for k in setting_keys})
        out.update(n=len(scored), n_errors=len(members) - len(scored))
        for metric in OCR_METRICS:
            out.update(_stats(metric, bootstrap_ci([r[metric] for r in scored], n_bootstrap, seed)))
        precision, recall = ([r[m] for r in scored] for m in ("word_precision", "word_recall"))
        out.update(_stats(MARIO_F_MEASURE, bootstrap_f_measure(precision, recall, n_bootstrap, seed), mean=""))
        if agreed:
            both = [a for a in agreed.get(key, []) if not a["error"]]
            for measure in AGREEMENT:
                out.update(_stats(measure, bootstrap_ci([a[measure] for a in both], n_bootstrap, seed)))
        summary.append(out)
    return summary


def _stats(name: str, stats: tuple[float, float, float], mean: str = "_mean") -> dict[str, float]:
    """``{name_mean, name_lo, name_hi}`` (``mean`` is the first column's suffix), rounded to 4 places."""
    return {f"{name}{suffix}": round(v, 4) for suffix, v in zip((mean, "_lo", "_hi"), stats)}


def agreement(rows: Sequence[dict]) -> list[dict]:
    """One agreement.csv row per image scored by several engines: the image's record columns,
    each engine's ``ocr_text``, ``exact_match`` and ``ocr_similarity`` (``<column>.<engine>``),
    ``text_agreement`` (SequenceMatcher ratio between the engines' texts, mean over pairs) and
    ``exact_match_agreement`` (1 when every engine's exact_match is the same), in record order;
    ``error`` names the engines that could not score the image (then no agreement)."""
    engines = _engine_names(rows)
    by_image: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_image.setdefault(row["image"], {})[row["engine"]] = row
    out = []
    for image, per_engine in by_image.items():
        first = next(iter(per_engine.values()))
        row = {k: v for k, v in first.items() if k not in ("engine", "ocr_text", "error", *OCR_METRICS)}
        for engine in engines:
            r = per_engine.get(engine, {})
            row.update({f"{col}.{engine}": r.get(col) for col in AGREEMENT_COLUMNS})
        failed = {e: per_engine[e]["error"] if e in per_engine else "no row" for e in engines}
        failed = {e: error for e, error in failed.items() if error}
        row["error"] = "; ".join(f"{e}: {error}" for e, error in failed.items())
        if not failed:
            row["text_agreement"] = text_agreement([per_engine[e]["ocr_text"] for e in engines])
            row["exact_match_agreement"] = verdict_agreement([per_engine[e]["exact_match"] for e in engines])
        out.append(row)
    return out


def per_prompt(rows: Sequence[dict]) -> list[dict]:
    """One per_prompt.csv row per prompt: mean ocr_similarity under each method/setting label
    (and engine, when there are several)."""
    labels = _engine_labels(rows)
    values: dict[str, dict[str, list[float]]] = {}
    for row in rows:
        by_label = values.setdefault(row["prompt"], {label: [] for label in labels.values()})
        if not row["error"]:
            by_label[labels[_engine_key(row)]].append(row["ocr_similarity"])
    expected = {row["prompt"]: row["expected_text"] for row in rows}
    return [
        {
            "prompt": prompt,
            "expected_text": expected[prompt],
            **{label: round(float(np.mean(v)), 4) if v else None for label, v in by_label.items()},
        }
        for prompt, by_label in values.items()
    ]


def format_summary(summary: Sequence[dict]) -> str:
    """A short text table of the summary: n, errors, ocr_similarity with CI, word_f1, and the
    engines' agreement when there is one."""
    width = max(len(s["label"]) for s in summary)
    return "\n".join(
        f"{s['label']:<{width}}  n={s['n']:<4} errors={s['n_errors']:<3} "
        f"ocr_similarity {s['ocr_similarity_mean']:.3f} [{s['ocr_similarity_lo']:.3f}, {s['ocr_similarity_hi']:.3f}]  "
        f"word_f1 {s['word_f1_mean']:.3f}"
        + (
            f"  engines agree: text {s['text_agreement_mean']:.3f}, exact_match {s['exact_match_agreement_mean']:.3f}"
            if "text_agreement_mean" in s
            else ""
        )
        for s in summary
    )


def write_csv(path: str | os.PathLike, rows: Sequence[dict], columns: Sequence[str] | None = None) -> Path:
    """Write ``rows`` atomically (columns: given, or the keys in order of first appearance);
    None and NaN become empty cells."""
    if columns is None:
        columns = list(dict.fromkeys(key for row in rows for key in row))

    def cell(value: Any) -> Any:
        return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value

    def write(tmp: str) -> None:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=columns, restval="")
            writer.writeheader()
            writer.writerows({k: cell(v) for k, v in row.items()} for row in rows)

    return atomic_write(path, write)


def _group_key(row: dict) -> tuple[str, str, str]:
    return row["model"], row["method"], row["setting"]


def _engine_key(row: dict) -> tuple[str, str, str, str]:
    return row["engine"], *_group_key(row)


def _groups(rows: Iterable[dict], by_engine: bool = False) -> dict[tuple, list[dict]]:
    groups: dict[tuple, list[dict]] = {}
    for row in rows:
        groups.setdefault(_engine_key(row) if by_engine else _group_key(row), []).append(row)
    return groups


def _engine_names(rows: Iterable[dict]) -> list[str]:
    return list(dict.fromkeys(row["engine"] for row in rows))


def _engine_labels(rows: Sequence[dict]) -> dict[tuple[str, str, str, str], str]:
    """(engine, model, method, setting) -> ``_labels``' label, followed by `` [engine]`` when the
    rows come from several engines."""
    labels = _labels(rows)
    several = len(_engine_names(rows)) > 1
    return {key: labels[key[1:]] + (f" [{key[0]}]" if several else "") for key in map(_engine_key, rows)}


def _labels(rows: Iterable[dict]) -> dict[tuple[str, str, str], str]:
    """Group key -> display label ``[model: ]method[ (params)]`` of per_image rows: the params shown
    are those that differ between the settings of that model and method; the model only when
    there are several."""
    settings = {_group_key(row): _setting_of(row) for row in rows}
    several_models = len({model for model, _, _ in settings}) > 1
    labels = {}
    for key, setting in settings.items():
        model, method, _ = key
        siblings = [other for (m, me, _), other in settings.items() if m == model and me == method]
        varying = [f"{k}={v}" for k, v in setting.items() if any(other.get(k) != v for other in siblings)]
        label = method + (f" ({', '.join(varying)})" if varying else "")
        labels[key] = f"{model}: {label}" if several_models else label
    return labels


def _setting_of(row: dict) -> dict[str, Any]:
    """The setting params of a per_image row (from its ``param.<key>`` columns)."""
    return setting_params({k.removeprefix("param."): v for k, v in row.items() if k.startswith("param.")})
