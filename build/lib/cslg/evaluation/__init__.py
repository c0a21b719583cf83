"""Step 4: OCR scoring of generated images, with tables and plots.

Input: a run folder's ``manifest.jsonl`` (see ``load_manifest``) and its images, or a plain
folder of images plus a generation prompt file (see ``records_from_images``). ``evaluate``
reads every image with one OCR engine or several (``cslg.evaluation.ocr.ENGINES``) and writes to its
output folder:

- ``per_image.csv``: one row per image and engine (engine by engine): image, model, method,
  seed, setting, the params as ``param.<key>`` columns, prompt, expected text (joined by
  `` | ``), ``engine``, OCR text, every metric of ``cslg.evaluation.metrics.OCR_METRICS``, and ``error``
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

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .ocr import OCREngine
from .plots import plot_heatmap, plot_methods
from .records import expected_text, flatten_params, load_manifest, records_from_images, setting_params
from .scoring import engine_list, ocr_images
from .tables import agreement, format_summary, per_prompt, summarize, write_csv

PER_IMAGE_CSV = "per_image.csv"
SUMMARY_CSV = "summary.csv"
PER_PROMPT_CSV = "per_prompt.csv"
AGREEMENT_CSV = "agreement.csv"
METHODS_BAR_PNG = "methods_bar.png"
HEATMAP_PNG = "heatmap_cfg_x_cslg.png"


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
    engines = engine_list(engine)
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


__all__ = ["EvalResult", "agreement", "evaluate", "expected_text", "flatten_params", "format_summary", "load_manifest",
           "ocr_images", "per_prompt", "records_from_images", "setting_params", "summarize", "write_csv"]
