"""Step 4: OCR scoring of generated images, with tables and plots.

Input: a run folder's ``manifest.jsonl`` (see ``load_manifest``) and its images, or a plain
folder of images plus a generation prompt file (see ``records_from_images``). ``evaluate``
reads every image with one OCR engine or several (``cslg.ocr.ENGINES``) and writes to its
output folder:

- ``per_image.csv``: one row per image and engine (engine by engine): image, model, method,
  seed, setting, the params as ``param.<key>`` columns, prompt, expected text (joined by
  `` | ``), ``engine``, OCR text, every metric of ``cslg.metrics.METRICS``, and ``error``
  (empty when the image was scored).
- ``summary.csv``: one row per engine, model, method and setting (the params minus per-image
  ones such as the seed): the engine, a short ``label`` (the method and the params that differ
  between its settings, `` [engine]`` appended when there are several engines), the setting's
  ``param.<key>`` columns, ``n`` scored images, ``n_errors``, ``<metric>_mean``, ``_lo``,
  ``_hi`` (mean and 95% bootstrap CI over the scored images), and ``word_f_measure``, ``_lo``,
  ``_hi`` (MARIO-Eval's F-measure of the mean word precision and recall, with its CI). With
  several engines also ``text_agreement_*`` and ``exact_match_agreement_*``: the setting's
  mean per-image agreement (below) with its CI, the same on each engine's row.
- ``agreement.csv`` (several engines only): one row per image: the record columns, each
  engine's ``ocr_text.<engine>``, ``exact_match.<engine>`` and ``ocr_similarity.<engine>``,
  ``text_agreement`` (SequenceMatcher ratio between the engines' texts) and
  ``exact_match_agreement`` (1 when the engines' exact_match verdicts are the same).
- ``per_prompt.csv``: mean ocr_similarity per prompt (rows) and method/setting label (columns).
- ``methods_bar.png``: ocr_similarity and word_f1 per method/setting with CI error bars.
- ``heatmap_cfg_x_cslg.png``: mean ocr_similarity (first engine) over cfg_scale x cslg_scale,
  drawn when both params are present and each takes several values.

OCR is resumable, engine by engine: an image that already has an error-free row from the same
engine in ``per_image.csv`` keeps its OCR text (metrics are recomputed) unless ``force``; the
file is rewritten atomically every ``SAVE_EVERY`` images and when the run stops, with the rows
of this run's engines only. A missing or unreadable image, or a prompt without expected text,
gives an error row and the run goes on.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from matplotlib.figure import Figure
from PIL import Image
from tqdm import tqdm

from .io import atomic_write, read_jsonl
from .metrics import METRICS, bootstrap_ci, bootstrap_f_measure, score, text_agreement, verdict_agreement
from .ocr import OCREngine
from .prompts import load_generation_prompts
from .text import extract_quoted, normalize_text, prompt_slug

MANIFEST = "manifest.jsonl"
PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
PER_PROMPT_CSV = "per_prompt.csv"
AGREEMENT_CSV = "agreement.csv"
METHODS_BAR_PNG = "methods_bar.png"
HEATMAP_PNG = "heatmap_cfg_x_cslg.png"

REQUIRED_KEYS = ("image", "prompt", "method")
# Params that vary per image, not per setting (matched on the last component of a flattened key).
PER_IMAGE_PARAMS = frozenset({"seed", "index", "prompt_index", "prompt", "image", "expected_text"})
BAR_METRICS = ("ocr_similarity", "word_f1")
# Summary column of MARIO-Eval's F-measure: f_measure of the mean word precision and recall.
MARIO_F_MEASURE = "word_f_measure"
# Per-image agreement between engines (agreement.csv, and their means in summary.csv).
AGREEMENT = ("text_agreement", "exact_match_agreement")
# Per-engine columns of agreement.csv, as ``<column>.<engine>``.
AGREEMENT_COLUMNS = ("ocr_text", "exact_match", "ocr_similarity")
HEATMAP_ROWS, HEATMAP_COLS = "cfg_scale", "cslg_scale"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
SAVE_EVERY = 10
NO_EXPECTED_TEXT = "no expected text: the prompt quotes nothing and the manifest gives no expected_text"
MAPPING_RULE = (
    "an image maps to a prompt when its path below the folder (without extension) contains "
    "prompt_slug(prompt), or else when its file name starts with the 0-based prompt index "
    "followed by '_' or nothing (0003_cslg.png, 12.png)"
)


# --------------------------------------------------------------------------- inputs


def load_manifest(run_dir: str | os.PathLike) -> list[dict]:
    """The records of ``<run_dir>/manifest.jsonl`` (of its shard manifests when an interrupted run has not merged
    them); for an image listed several times the last record wins."""
    path = Path(run_dir) / MANIFEST
    sources = [path] if path.is_file() else sorted((Path(run_dir) / "manifests").glob("shard-*.jsonl"))
    if not sources:
        raise FileNotFoundError(f"no manifest at {path}: a run folder needs manifest.jsonl (one JSON object per image)")
    if sources[0] != path:  # an interrupted grid: its shards' rows are there, the merged manifest is not yet
        print(f"note: {path} is missing; scoring the rows of {len(sources)} shard manifest(s) in {sources[0].parent}")
    records: dict[str, dict] = {}
    for source in sources:
        for lineno, record in read_jsonl(source):
            _check_record(record, f"{source}: line {lineno}")
            records[record["image"]] = record
    if not records:
        raise ValueError(f"{path} lists no images")
    return list(records.values())


def _check_record(record: dict, where: str) -> None:
    missing = [key for key in REQUIRED_KEYS if key not in record]
    if missing:
        raise ValueError(f"{where} lacks the key(s) {', '.join(missing)}")
    for key in REQUIRED_KEYS:
        if not isinstance(record[key], str):
            raise ValueError(f"{where}: {key!r} must be a string")
    expected = record.get("expected_text")
    if expected is not None and not (isinstance(expected, list) and all(isinstance(t, str) for t in expected)):
        raise ValueError(f"{where}: 'expected_text' must be a list of strings")
    if not isinstance(record.get("params", {}), dict):
        raise ValueError(f"{where}: 'params' must be an object")


def records_from_images(
    images_dir: str | os.PathLike, prompts_file: str | os.PathLike, exclude: Iterable[str | os.PathLike] = ()
) -> list[dict]:
    """Manifest-like records for a plain folder of images (searched recursively, skipping
    ``exclude`` folders and hidden files), following ``MAPPING_RULE``.

    The method is the image's sub-folder path less any folder named by the prompt's slug (the
    images folder's own name when nothing is left), the seed is read from ``seed<N>`` in the
    file name (None without it), params are empty.
    An image that maps to no prompt is an error.
    """
    images_dir = Path(images_dir)
    prompts = load_generation_prompts(prompts_file)
    slugs: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        slugs.setdefault(prompt_slug(prompt.prompt), index)
    files = _image_files(images_dir, exclude)
    if not files:
        raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {images_dir}")
    records, unmapped = [], []
    for path in files:
        rel = path.relative_to(images_dir)
        index = _prompt_index(rel, slugs, len(prompts))
        if index is None:
            unmapped.append(rel.as_posix())
            continue
        seed = re.search(r"seed[_-]?(\d+)", rel.stem)
        folders = [part for part in rel.parent.parts if prompt_slug(prompts[index].prompt) not in part]
        record = {
            "image": rel.as_posix(),
            "prompt": prompts[index].prompt,
            "method": "/".join(folders) or images_dir.resolve().name,
            "seed": int(seed[1]) if seed else None,
            "params": {},
            "model": "",
        }
        if prompts[index].expected_text is not None:
            record["expected_text"] = list(prompts[index].expected_text)
        records.append(record)
    if unmapped:
        shown = ", ".join(unmapped[:5]) + (", ..." if len(unmapped) > 5 else "")
        raise ValueError(
            f"{len(unmapped)} image(s) in {images_dir} match no prompt of {prompts_file} ({shown}); {MAPPING_RULE}"
        )
    return records


def _image_files(images_dir: Path, exclude: Iterable[str | os.PathLike]) -> list[Path]:
    excluded = [Path(e).resolve() for e in exclude]
    return sorted(
        path
        for path in images_dir.rglob("*")
        if path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
        and not any(part.startswith(".") for part in path.relative_to(images_dir).parts)
        and not any(path.resolve().is_relative_to(e) for e in excluded)
    )


def _prompt_index(rel: Path, slugs: dict[str, int], n_prompts: int) -> int | None:
    """The prompt an image maps to under ``MAPPING_RULE``, or None."""
    name = rel.with_suffix("").as_posix()
    hits = {index for slug, index in slugs.items() if slug in name}
    if len(hits) > 1:
        raise ValueError(f"{rel} contains the slugs of several prompts ({sorted(hits)})")
    if hits:
        return hits.pop()
    match = re.match(r"(\d+)(?:_|$)", rel.stem)
    return int(match[1]) if match and int(match[1]) < n_prompts else None


# --------------------------------------------------------------------------- per-image rows


def expected_text(record: dict) -> list[str]:
    """The record's ``expected_text``, or the quoted strings of its prompt when absent; NFKC-normalised."""
    given = record.get("expected_text")
    texts = given if given is not None else extract_quoted(record["prompt"])
    return [t for t in map(normalize_text, texts) if t]


def flatten_params(params: dict, prefix: str = "") -> dict[str, Any]:
    """Nested params as ``{"a.b": value}``; lists and other non-scalars become JSON strings."""
    flat: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_params(value, f"{name}."))
        elif value is None or isinstance(value, (str, int, float, bool)):
            flat[name] = value
        else:
            flat[name] = json.dumps(value)
    return flat


def setting_params(flat_params: dict[str, Any]) -> dict[str, Any]:
    """The flattened params that define a setting: all but ``PER_IMAGE_PARAMS``, sorted by key."""
    return {k: v for k, v in sorted(flat_params.items()) if k.rsplit(".", 1)[-1] not in PER_IMAGE_PARAMS}


def ocr_images(
    records: Sequence[dict],
    base_dir: str | os.PathLike,
    per_image_csv: str | os.PathLike,
    engine: OCREngine | Sequence[OCREngine],
    force: bool = False,
    save_every: int = SAVE_EVERY,
) -> list[dict]:
    """OCR and score every record's image (paths relative to ``base_dir``) with each engine,
    resuming each engine from its own rows in ``per_image_csv`` (see the module docstring);
    returns the rows engine by engine, each in record order."""
    engines = _engine_list(engine)
    base_dir, per_image_csv = Path(base_dir), Path(per_image_csv)
    param_keys = sorted({key for r in records for key in flatten_params(r.get("params") or {})})
    columns = ["image", "model", "method", "seed", "setting", *[f"param.{k}" for k in param_keys]]
    columns += ["prompt", "expected_text", "engine", "ocr_text", *METRICS, "error"]
    rows: dict[tuple[str, str], dict] = {}  # (engine, image) -> row
    pending: dict[str, list] = {}
    for eng in engines:
        cache = {} if force else _cached_ocr_texts(per_image_csv, eng.name)
        pending[eng.name] = []
        for record in records:
            expected = expected_text(record)
            if not expected:
                rows[eng.name, record["image"]] = _row(record, expected, eng.name, error=NO_EXPECTED_TEXT)
            elif record["image"] in cache:
                rows[eng.name, record["image"]] = _row(record, expected, eng.name, ocr_text=cache[record["image"]])
            else:
                pending[eng.name].append((record, expected))

    def ordered() -> list[dict]:
        return [rows[e.name, r["image"]] for e in engines for r in records if (e.name, r["image"]) in rows]

    done = 0
    try:
        for eng in engines:
            for record, expected in tqdm(pending[eng.name], desc=f"OCR ({eng.name})", unit="image"):
                path = base_dir / record["image"]
                problem = _image_problem(path)
                if problem:
                    rows[eng.name, record["image"]] = _row(record, expected, eng.name, error=problem)
                else:
                    rows[eng.name, record["image"]] = _row(record, expected, eng.name, ocr_text=eng.read(path))
                done += 1
                if done % save_every == 0:
                    write_csv(per_image_csv, ordered(), columns)
    finally:
        write_csv(per_image_csv, ordered(), columns)
    return ordered()


def _engine_list(engine: OCREngine | Sequence[OCREngine]) -> list[OCREngine]:
    """One engine or several as a list; several must have distinct names (the rows' key)."""
    engines = list(engine) if isinstance(engine, (list, tuple)) else [engine]
    names = [e.name for e in engines]
    if not engines or len(set(names)) < len(names):
        raise ValueError(f"need one or more OCR engines with distinct names, got {names}")
    return engines


def _cached_ocr_texts(per_image_csv: Path, engine_name: str) -> dict[str, str]:
    """Image -> OCR text of the error-free rows a previous run of ``engine_name`` wrote."""
    if not per_image_csv.is_file():
        return {}
    with open(per_image_csv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    usable = [r for r in rows if r.get("image") and r.get("ocr_text") is not None and not r.get("error")]
    return {r["image"]: r["ocr_text"] for r in usable if r.get("engine") == engine_name}


def _image_problem(path: Path) -> str:
    """Why ``path`` cannot be OCRed ('' when it can): missing, or not a decodable image."""
    if not path.is_file():
        return f"missing image {path}"
    try:
        with Image.open(path) as image:
            image.load()
    except (OSError, SyntaxError, ValueError) as e:
        return f"unreadable image {path}: {e}"
    return ""


def _row(record: dict, expected: list[str], engine_name: str, ocr_text: str | None = None, error: str = "") -> dict:
    """One per_image.csv row; metrics only when there is no error."""
    params = flatten_params(record.get("params") or {})
    row = {
        "image": record["image"],
        "model": record.get("model", ""),
        "method": record["method"],
        "seed": record.get("seed"),
        "setting": ", ".join(f"{k}={v}" for k, v in setting_params(params).items()),
        **{f"param.{k}": v for k, v in params.items()},
        "prompt": record["prompt"],
        "expected_text": " | ".join(expected),
        "engine": engine_name,
        "ocr_text": ocr_text,
        "error": error,
    }
    if not error:
        row.update(score(ocr_text, expected))
    return row


# --------------------------------------------------------------------------- tables


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
        for metric in METRICS:
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
        row = {k: v for k, v in first.items() if k not in ("engine", "ocr_text", "error", *METRICS)}
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


# --------------------------------------------------------------------------- plots


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


def plot_heatmap(rows: Sequence[dict], path: str | os.PathLike) -> bool:
    """Mean ocr_similarity over cfg_scale (rows) x cslg_scale (columns) of the scored images
    that have both params; drawn (returns True) only when each takes several values."""
    points = [
        (_as_float(r.get(f"param.{HEATMAP_ROWS}")), _as_float(r.get(f"param.{HEATMAP_COLS}")), r["ocr_similarity"])
        for r in rows
        if not r["error"]
    ]
    points = [p for p in points if p[0] is not None and p[1] is not None]
    row_values, col_values = sorted({p[0] for p in points}), sorted({p[1] for p in points})
    if len(row_values) < 2 or len(col_values) < 2:
        return False
    sums, counts = np.zeros((len(row_values), len(col_values))), np.zeros((len(row_values), len(col_values)))
    for r, c, value in points:
        sums[row_values.index(r), col_values.index(c)] += value
        counts[row_values.index(r), col_values.index(c)] += 1
    grid = np.divide(sums, counts, out=np.full_like(sums, np.nan), where=counts > 0)
    fig = Figure(figsize=(1.1 * len(col_values) + 2.5, 0.8 * len(row_values) + 2), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(grid, origin="lower", vmin=0, vmax=1, cmap="viridis")
    for (i, j), value in np.ndenumerate(grid):
        if not np.isnan(value):
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.5 else "black")
    ax.set_xticks(range(len(col_values)), [f"{v:g}" for v in col_values])
    ax.set_yticks(range(len(row_values)), [f"{v:g}" for v in row_values])
    ax.set_xlabel(HEATMAP_COLS)
    ax.set_ylabel(HEATMAP_ROWS)
    ax.set_title("mean OCR similarity")
    fig.colorbar(image, ax=ax)
    atomic_write(path, lambda tmp: fig.savefig(tmp, format="png", dpi=150))
    return True


def _as_float(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


# --------------------------------------------------------------------------- entry point


@dataclass
class EvalResult:
    """What ``evaluate`` computed: per-image rows, summary rows, the files written (name -> path)
    and, with several engines, the per-image agreement rows."""

    rows: list[dict]
    summary: list[dict]
    files: dict[str, Path]
    agreement: list[dict] = field(default_factory=list)


def evaluate(
    records: Sequence[dict],
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    engine: OCREngine | Sequence[OCREngine],
    n_bootstrap: int = 1000,
    seed: int = 0,
    force: bool = False,
) -> EvalResult:
    """OCR, score and tabulate ``records`` (images relative to ``base_dir``) into ``out_dir``
    with one engine or several (a list: the first one's scores draw the heatmap)."""
    engines = _engine_list(engine)
    out_dir = Path(out_dir)
    rows = ocr_images(records, base_dir, out_dir / PER_IMAGE_CSV, engines, force=force)
    summary = summarize(rows, n_bootstrap, seed)
    files = {
        "per_image": out_dir / PER_IMAGE_CSV,
        "summary": write_csv(out_dir / SUMMARY_CSV, summary),
        "per_prompt": write_csv(out_dir / PER_PROMPT_CSV, per_prompt(rows)),
        "methods_bar": plot_methods(summary, out_dir / METHODS_BAR_PNG),
    }
    agreed = agreement(rows) if len(engines) > 1 else []
    if agreed:
        files["agreement"] = write_csv(out_dir / AGREEMENT_CSV, agreed)
    else:
        (out_dir / AGREEMENT_CSV).unlink(missing_ok=True)  # a stale one from an earlier run would mislead
    heatmap = out_dir / HEATMAP_PNG
    if plot_heatmap([row for row in rows if row["engine"] == engines[0].name], heatmap):
        files["heatmap"] = heatmap
    else:
        heatmap.unlink(missing_ok=True)
    return EvalResult(rows, summary, files, agreed)
