"""The tables of step 4: a summary per engine, model, method and setting with bootstrap CIs, the engines' per-image
agreement, per-prompt means, and CSV writing."""

from __future__ import annotations

import csv
import math
import os
from collections import Counter
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


def summarize(rows: Sequence[dict], n_bootstrap: int = 1000, seed: int = 0, columns: Sequence[str] = (),
              set_level: dict[tuple[str, str, str], dict[str, float]] | None = None) -> list[dict]:
    """One summary.csv row per (engine, model, method, setting), in order of first appearance;
    with several engines, each row also carries that setting's engine agreement. Rows without an
    engine (no OCR) get no OCR columns. Each scorer column of ``columns`` adds ``<column>_mean``,
    ``_lo``, ``_hi`` (over the rows that have a value) and ``<column>_n``; ``set_level`` maps a
    (model, method, setting) to its set-level values (FID...), added as they are."""
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
        if engine:
            for metric in OCR_METRICS:
                out.update(_stats(metric, bootstrap_ci([r[metric] for r in scored], n_bootstrap, seed)))
            precision, recall = ([r[m] for r in scored] for m in ("word_precision", "word_recall"))
            out.update(_stats(MARIO_F_MEASURE, bootstrap_f_measure(precision, recall, n_bootstrap, seed), mean=""))
        for column in columns:
            values = [r[column] for r in members if _number(r.get(column)) is not None]
            out.update(_stats(column, bootstrap_ci(values, n_bootstrap, seed)))
            out[f"{column}_n"] = len(values)
        out.update({k: round(v, 4) for k, v in (set_level or {}).get(key, {}).items()})
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


def format_summary(summary: Sequence[dict], columns: Sequence[str] = (), set_level: Sequence[str] = ()) -> str:
    """A short text table of the summary: n, errors, ocr_similarity with CI and word_f1 (rows with
    OCR), the engines' agreement when there is one, each scorer column's mean with CI and each
    set-level value."""

    def line(s: dict) -> str:
        parts = [f"{s['label']:<{width}}  n={s['n']:<4} errors={s['n_errors']:<3}"]
        if "ocr_similarity_mean" in s:
            parts.append(f"ocr_similarity {_ci_text(s, 'ocr_similarity')}  word_f1 {s['word_f1_mean']:.3f}")
        if "text_agreement_mean" in s:
            parts.append(f"engines agree: text {s['text_agreement_mean']:.3f}, "
                         f"exact_match {s['exact_match_agreement_mean']:.3f}")
        parts += [f"{column} {_ci_text(s, column)}" for column in columns if f"{column}_mean" in s]
        parts += [f"{key} {s[key]:.3f}" for key in set_level if _number(s.get(key)) is not None]
        return "  ".join(parts)

    width = max(len(s["label"]) for s in summary)
    return "\n".join(map(line, summary))


def _ci_text(s: dict, name: str) -> str:
    return f"{s[f'{name}_mean']:.3f} [{s[f'{name}_lo']:.3f}, {s[f'{name}_hi']:.3f}]"


def _number(value: Any) -> float | None:
    """``value`` as a finite float, or None (empty, NaN, not a number)."""
    try:
        x = float(value)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None


def paired(rows: Sequence[dict], measures: dict[str, bool], baseline: str = "cfg", n_bootstrap: int = 1000,
           seed: int = 0) -> list[dict]:
    """paired.csv: each method setting against the ``baseline`` method on the same model, prompt and seed, per
    measure (``measures``: column -> higher is better). OCR metrics are paired engine by engine, scorer columns on
    the first engine's rows (their values are the same on every engine's row).

    A setting is paired with every baseline setting of its model that agrees with it on the params both have
    (e.g. the same ``cfg_scale`` and steps); when none agrees, with every baseline setting of its model. Images
    whose (prompt, seed) is not unique on either side are left out. Each row: the measure (and engine), model,
    method, label, setting, baseline label and setting, ``n_pairs``, ``win_rate`` (the share of pairs where the
    method is better, ties counting one half) and ``mean_diff`` (method - baseline), each with its 95% bootstrap
    CI (``_lo``, ``_hi``; ``bootstrap_ci`` over the pairs), and ``higher_is_better``."""
    engines = _engine_names(rows)
    labels = _labels(rows)
    out = []
    for measure, higher in measures.items():
        for engine in engines if measure in OCR_METRICS else engines[:1]:
            usable = [r for r in rows if r["engine"] == engine and _number(r.get(measure)) is not None]
            groups = _groups(usable)
            for key, members in groups.items():
                model, method, _ = key
                if method == baseline:
                    continue
                for base_key in _baseline_settings(key, groups, baseline):
                    diffs, wins = _pair(members, groups[base_key], measure, higher)
                    row = {"measure": measure, "engine": engine, "model": model, "method": method,
                           "label": labels[key], "setting": key[2], "baseline": labels[base_key],
                           "baseline_setting": base_key[2], "n_pairs": len(diffs)}
                    row.update(_stats("win_rate", bootstrap_ci(wins, n_bootstrap, seed), mean=""))
                    row.update(_stats("mean_diff", bootstrap_ci(diffs, n_bootstrap, seed), mean=""))
                    out.append({**row, "higher_is_better": higher})
    return out


def _baseline_settings(key: tuple[str, str, str], groups: dict[tuple, list[dict]], baseline: str) -> list[tuple]:
    """The baseline groups ``key`` is paired with (see ``paired``)."""
    candidates = [k for k in groups if k[0] == key[0] and k[1] == baseline]
    setting = _setting_of(groups[key][0])

    def agrees(k: tuple) -> bool:
        other = _setting_of(groups[k][0])
        return all(other[p] == setting[p] for p in other.keys() & setting.keys())

    return [k for k in candidates if agrees(k)] or candidates


def _pair(members: Sequence[dict], base: Sequence[dict], measure: str, higher: bool) -> tuple[list[float], list[float]]:
    """Differences (method - baseline) and wins (1, 1/2 for a tie, 0) over the images with the same prompt and seed."""

    def unique(group: Sequence[dict]) -> dict[tuple, float]:
        keys = [(r["prompt"], str(r.get("seed"))) for r in group]
        counts = Counter(keys)
        return {k: float(r[measure]) for k, r in zip(keys, group) if counts[k] == 1}

    ours, theirs = unique(members), unique(base)
    diffs = [ours[k] - theirs[k] for k in ours if k in theirs]
    wins = [0.5 if d == 0 else float((d > 0) == higher) for d in diffs]
    return diffs, wins


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
