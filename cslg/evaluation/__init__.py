"""Step 4: scoring of generated images (OCR and the scorers of ``cslg.scorers``), with tables and plots.

Input: a run folder's ``manifest.jsonl`` (see ``load_manifest``) and its images, or a plain
folder of images plus a generation prompt file (see ``records_from_images``). ``evaluate``
reads every image with one OCR engine or several (``cslg.evaluation.ocr.ENGINES``; none: no
OCR), scores it with each requested scorer (``cslg.evaluation.scores``: cached per image and
scorer) and writes to its output folder:

- ``per_image.csv``: one row per image and engine (engine by engine; one row per image with an
  empty ``engine`` without OCR): image, model, method, seed, setting, the params as
  ``param.<key>`` columns, prompt, expected text (joined by `` | ``), ``engine``, OCR text,
  every metric of ``cslg.evaluation.metrics.OCR_METRICS`` (with OCR), one column per scorer
  column (``clip``, ``hands``, ``hands.count``...: the same value on every engine's row of an
  image, empty when the scorer could not score it), and ``error`` (empty when the image was
  OCR-scored; without OCR: a missing or unreadable image).
- ``summary.csv``: one row per engine, model, method and setting (the params minus per-image
  ones such as the seed): the engine, a short ``label`` (the method and the params that differ
  between its settings, `` [engine]`` appended when there are several engines), the setting's
  ``param.<key>`` columns, ``n`` scored images, ``n_errors``; with OCR ``<metric>_mean``, ``_lo``,
  ``_hi`` (mean and 95% bootstrap CI over the scored images), and ``word_f_measure``, ``_lo``,
  ``_hi`` (MARIO-Eval's F-measure of the mean word precision and recall, with its CI). With
  several engines also ``text_agreement_*`` and ``exact_match_agreement_*``: the setting's
  mean per-image agreement (below) with its CI, the same on each engine's row. Each scorer
  column: ``<column>_mean``, ``_lo``, ``_hi`` and ``<column>_n``; each set-level value (``fid``...)
  of the setting's images against the reference folder as it is.
- ``paired.csv`` (when the baseline method is in the run): each setting against the baseline on
  the same prompt and seed, per measure (``ocr_similarity`` per engine, every scorer column):
  win rate and mean paired difference with 95% bootstrap CIs (``tables.paired``).
- ``agreement.csv`` (several engines only): one row per image: the record columns, each
  engine's ``ocr_text.<engine>``, ``exact_match.<engine>`` and ``ocr_similarity.<engine>``,
  ``text_agreement`` (SequenceMatcher ratio between the engines' texts) and
  ``exact_match_agreement`` (1 when the engines' exact_match verdicts are the same).
- ``per_prompt.csv`` (with OCR): mean ocr_similarity per prompt (rows) and method/setting label (columns).
- ``methods_bar.png`` (with OCR): ocr_similarity and word_f1 per method/setting with CI error bars.
- ``heatmap_cfg_x_cslg.png``: mean ocr_similarity (first engine) over cfg_scale x cslg_scale,
  drawn when both params are present and each takes several values.
- ``scale_<measure>.png``: each measure (``ocr_similarity``, each scorer's first column, each
  set-level value) against each method's guidance scale, one line per method
  (``plots.scale_lines``), when some method has several scales.
- ``tradeoff_<x>_vs_<y>.png``: for ``tradeoff=(x, y)``, y against x with one curve per method
  across its scales.
- ``scores/<scorer>.jsonl``: the scorers' cache (``cslg.evaluation.scores``).
- ``eval.json``: what scored the images: the OCR engines, each scorer's model, options, citation and
  problem, the reference folder, the baseline, the bootstrap settings and the library versions.

OCR is resumable, engine by engine: an image that already has an error-free row from the same
engine in ``per_image.csv`` keeps its OCR text (metrics are recomputed) unless ``force``; the
file is rewritten atomically every ``SAVE_EVERY`` images and when the run stops, with the rows
of this run's engines only (an evaluation without OCR keeps no OCR texts). A missing or
unreadable image, or a prompt without expected text, gives an error row and the run goes on.
Scorers resume from their cache; a scorer that cannot run is one line of ``EvalResult.problems``
and the others still run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ..io import atomic_write_json, image_problem
from ..options import OCR_SCORER as OCR
from ..provenance import versions
from ..scorers import Scorer
from ..scorers import names as scorer_names
from .metrics import OCR_METRICS
from .ocr import OCREngine
from .plots import plot_against_scale, plot_heatmap, plot_methods, plot_tradeoff
from .records import expected_text, flatten_params, load_manifest, records_from_images, setting_params
from .scores import SCORES_DIR, ScorerOutcome, file_sha256, run_scorer
from .scoring import engine_list, image_rows, ocr_images, per_image_columns
from .tables import agreement, format_summary, paired, per_prompt, summarize, write_csv

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
PER_PROMPT_CSV = "per_prompt.csv"
AGREEMENT_CSV = "agreement.csv"
METHODS_BAR_PNG = "methods_bar.png"
HEATMAP_PNG = "heatmap_cfg_x_cslg.png"
PAIRED_CSV = "paired.csv"
EVAL_JSON = "eval.json"


@dataclass
class EvalResult:
    """What ``evaluate`` computed: per-image rows, summary rows, the files written (name -> path), with several
    engines the per-image agreement rows, the paired comparisons, each scorer's outcome, the measures (per-image
    columns and set-level values) and ``problems``: one line per scorer that could not run."""

    rows: list[dict]
    summary: list[dict]
    files: dict[str, Path]
    agreement: list[dict] = field(default_factory=list)
    paired: list[dict] = field(default_factory=list)
    scores: list[ScorerOutcome] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    set_level: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def evaluate(
    records: Sequence[dict],
    base_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    engine: OCREngine | Sequence[OCREngine] | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    force: bool = False,
    *,
    scorers: Sequence[str | Scorer] = (),
    models: dict[str, str | os.PathLike] | None = None,
    device: Any = None,
    batch_size: int | None = None,
    reference: str | os.PathLike | None = None,
    baseline: str = "cfg",
    tradeoff: Sequence[str] | None = None,
    scale_param: str | None = None,
    options: dict[str, dict[str, Any]] | None = None,
) -> EvalResult:
    """OCR, score and tabulate ``records`` (images relative to ``base_dir``) into ``out_dir``
    with one engine or several (a list: the first one's scores draw the heatmap; None: no OCR)
    and the ``scorers`` (registered names, built on ``device`` from ``models[name]`` or their
    default model, or instances); set-level scorers compare each setting's images with the
    ``reference`` folder. ``baseline``: the method of paired.csv; ``tradeoff``: two measures
    (a scorer name stands for its first column, ``ocr`` for ocr_similarity) for the trade-off plot;
    ``scale_param``: the param drawn as the guidance scale (default: each method's own);
    ``options``: scorer name -> keyword options of its constructor (e.g. ``{"vlm-judge": {"feature": "hands"}}``)."""
    engines = engine_list(engine) if engine is not None and engine != [] else []
    _check_scorers(scorers, models, tradeoff, bool(engines), options)
    if not engines and not scorers:
        raise ValueError("nothing to score: give an OCR engine or scorers")
    out_dir, base_dir = Path(out_dir), Path(base_dir)
    if engines:
        rows = ocr_images(records, base_dir, out_dir / PER_IMAGE_CSV, engines, force=force)
    else:
        rows = image_rows(records, base_dir)
    hashes = {}
    if scorers:
        readable = [r for r in records if not image_problem(base_dir / r["image"])]
        hashes = {r["image"]: file_sha256(base_dir / r["image"]) for r in readable}
    outcomes = [run_scorer(s, records, base_dir, out_dir / SCORES_DIR, hashes, models=_by_name(models),
                           device=device, batch_size=batch_size, reference=reference, force=force,
                           options=(options or {}).get(s if isinstance(s, str) else s.name)) for s in scorers]
    columns, set_values, set_level = _attach(rows, outcomes)
    result = EvalResult(rows, summarize(rows, n_bootstrap, seed, columns, set_values), {}, scores=outcomes,
                        columns=columns, set_level=set_level, problems=[o.problem for o in outcomes if o.problem])
    files = result.files
    files["per_image"] = write_csv(out_dir / PER_IMAGE_CSV, rows, per_image_columns(records, bool(engines), columns))
    files["summary"] = write_csv(out_dir / SUMMARY_CSV, result.summary)
    files["eval"] = atomic_write_json(out_dir / EVAL_JSON, {
        "ocr_engines": [e.name for e in engines],
        "scorers": [{"name": o.name, "model": o.model, "options": o.options, "citation": o.citation,
                     "set_level": o.set_level, "scored_now": o.scored, "problem": o.problem} for o in outcomes],
        "reference": str(reference) if reference is not None else None,
        "baseline": baseline, "n_bootstrap": n_bootstrap, "bootstrap_seed": seed, "versions": versions()})
    _optional(files, "per_prompt", out_dir / PER_PROMPT_CSV,
              (lambda p: write_csv(p, per_prompt(rows))) if engines else None)
    _optional(files, "methods_bar", out_dir / METHODS_BAR_PNG,
              (lambda p: plot_methods(result.summary, p)) if engines else None)
    result.agreement = agreement(rows) if len(engines) > 1 else []
    _optional(files, "agreement", out_dir / AGREEMENT_CSV,
              (lambda p: write_csv(p, result.agreement)) if result.agreement else None)
    first_engine = [row for row in rows if row["engine"] == engines[0].name] if engines else []
    _optional(files, "heatmap", out_dir / HEATMAP_PNG, lambda p: plot_heatmap(first_engine, p) and p)

    higher = {c: o.higher_is_better for o in outcomes if not o.set_level and not o.problem for c in o.columns}
    measures = {"ocr_similarity": True, **higher} if engines else higher
    if any(r["method"] == baseline for r in rows):
        result.paired = paired(rows, measures, baseline, n_bootstrap, seed)
    elif measures:
        result.notes.append(f"no paired comparison: the baseline method {baseline!r} is not in the run (--baseline)")
    _optional(files, "paired", out_dir / PAIRED_CSV, (lambda p: write_csv(p, result.paired)) if result.paired else None)

    _draw_measures(result, out_dir, bool(engines), tradeoff, scale_param)
    return result


def _draw_measures(result: EvalResult, out_dir: Path, ocr: bool, tradeoff: Sequence[str] | None,
                   scale_param: str | None) -> None:
    """The scale plots of every measure and the trade-off plot; stale ones from an earlier evaluation are removed."""
    for stale in [*out_dir.glob("scale_*.png"), *out_dir.glob("tradeoff_*.png")]:
        stale.unlink()
    ran = [o for o in result.scores if not o.problem]
    plotted = (["ocr_similarity"] if ocr else []) + [o.columns[0] for o in ran if not o.set_level] + result.set_level
    for measure in plotted:
        path = out_dir / f"scale_{_file_part(measure)}.png"
        if plot_against_scale(result.summary, measure, path, scale_param):
            result.files[f"scale_{measure}"] = path
    if tradeoff:
        x, y = (_measure(name, ran) for name in tradeoff)
        path = out_dir / f"tradeoff_{_file_part(x)}_vs_{_file_part(y)}.png"
        available = {*result.columns, *result.set_level, *(OCR_METRICS if ocr else ())}
        if x in available and y in available and plot_tradeoff(result.summary, x, y, path, scale_param):
            result.files["tradeoff"] = path
        else:
            result.notes.append(f"no trade-off plot: no setting has both {x} and {y}")


def _check_scorers(scorers: Sequence[str | Scorer], models: dict | None, tradeoff: Sequence[str] | None,
                   ocr: bool, options: dict | None = None) -> None:
    """Check every argument that names scorers (one-line ``ValueError`` / ``TypeError``)."""
    if isinstance(scorers, (str, Scorer)):
        raise TypeError("scorers must be a list of scorer names or Scorer instances")
    names = []
    for s in scorers:
        if isinstance(s, Scorer):
            names.append(s.name)
        elif isinstance(s, str):
            if s not in scorer_names():  # not imported here: a scorer whose package is missing is reported later
                raise ValueError(f"unknown scorer {s!r}; choose from {', '.join(scorer_names()) or '(none registered)'}")
            names.append(s)
        else:
            raise TypeError(f"scorers: expected scorer names or Scorer instances, got {type(s).__name__}")
    if len(set(names)) < len(names):
        raise ValueError(f"scorers: {next(n for n in names if names.count(n) > 1)!r} is given twice")
    by_name = [s for s in scorers if isinstance(s, str)]
    for what, given in (("models", models), ("options", options)):
        unknown = [name for name in (given or {}) if name not in by_name]
        if unknown:
            raise ValueError(f"{what}: {unknown[0]!r} is not among the scorers given by name "
                             f"({', '.join(by_name) or 'none'})")
    for name, given in (options or {}).items():
        if not isinstance(given, dict) or not all(isinstance(k, str) for k in given):
            raise TypeError(f"options: {name!r} needs a dict of keyword options, got {type(given).__name__}")
    if tradeoff is not None:
        if isinstance(tradeoff, str) or len(tradeoff) != 2:
            raise ValueError(f"tradeoff: give two measures, got {tradeoff!r}")
        allowed = names + ([OCR, *OCR_METRICS] if ocr else [])
        for name in tradeoff:
            if name not in allowed and name.split(".")[0] not in names:
                raise ValueError(f"tradeoff: {name!r} is not scored in this evaluation (scorers: "
                                 f"{', '.join(allowed) or 'none'})")


def _by_name(models: dict | None) -> dict[str, str]:
    return {name: str(model) for name, model in (models or {}).items() if model is not None}


def _attach(rows: list[dict], outcomes: Sequence[ScorerOutcome]) -> tuple[list[str], dict, list[str]]:
    """Put the per-image scorers' values into ``rows``; returns their columns, the set-level values per group and
    the set-level value names."""
    columns, set_values, set_level = [], {}, []
    for outcome in outcomes:
        if outcome.problem:
            continue
        if outcome.set_level:
            for key, values in outcome.groups.items():
                set_values.setdefault(key, {}).update(values)
                set_level += [k for k in values if k not in set_level]
            continue
        columns += outcome.columns
        for row in rows:
            values = outcome.values.get(row["image"], {})
            row.update({column: values.get(column) for column in outcome.columns})
    return columns, set_values, set_level


def _measure(name: str, outcomes: Sequence[ScorerOutcome]) -> str:
    """A trade-off measure's summary name: a scorer's first column (set-level: first value), ``ocr``: ocr_similarity."""
    if name == OCR:
        return "ocr_similarity"
    for outcome in outcomes:
        if outcome.name == name:
            return next(iter(next(iter(outcome.groups.values()), {})), name) if outcome.set_level else outcome.columns[0]
    return name


def _optional(files: dict[str, Path], name: str, path: Path, write) -> None:
    """Write an output that not every evaluation has (``write(path)`` returns the path, or a false value when it
    drew nothing); a stale one from an earlier evaluation is removed, as it would mislead."""
    written = write(path) if write is not None else None
    if written:
        files[name] = path
    else:
        path.unlink(missing_ok=True)


def _file_part(measure: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in measure)


__all__ = ["EvalResult", "agreement", "evaluate", "expected_text", "flatten_params", "format_summary", "load_manifest",
           "ocr_images", "paired", "per_prompt", "records_from_images", "setting_params", "summarize", "write_csv"]
