"""OCR of every record's image with one engine or several, resumable engine by engine from ``per_image.csv``, and
the per-image rows with every OCR metric (or, without OCR, one row per image for the scorers' columns).

A video's record (``strip_frames``: its image is a frame strip, ``cslg.video``) is read frame by frame: its
``ocr_text`` holds one line per frame of the strip and each metric is the mean over those frames."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

from ..io import image_problem
from ..video import strip_frames
from .metrics import OCR_METRICS, score
from .ocr import OCREngine
from .records import expected_text, flatten_params, setting_text
from .tables import write_csv

SAVE_EVERY = 10
FRAME_SEPARATOR = "\n"  # between the frames' texts in a video's ocr_text
NO_EXPECTED_TEXT = "no expected text: the prompt quotes nothing and the manifest gives no expected_text"


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
    engines = engine_list(engine)
    base_dir, per_image_csv = Path(base_dir), Path(per_image_csv)
    columns = per_image_columns(records, ocr=True)
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
                problem = image_problem(path)
                if problem:
                    rows[eng.name, record["image"]] = _row(record, expected, eng.name, error=problem)
                else:
                    rows[eng.name, record["image"]] = _read(eng, record, expected, path)
                done += 1
                if done % save_every == 0:
                    write_csv(per_image_csv, ordered(), columns)
    finally:
        write_csv(per_image_csv, ordered(), columns)
    return ordered()


def _read(engine: OCREngine, record: dict, expected: list[str], path: Path) -> dict:
    """The row of one OCR reading; an image the engine fails on (a 1-pixel-high strip, say) is an error row."""
    try:
        text = _text(engine, path, record)
    except Exception as e:  # the engines raise their own (OpenCV, onnxruntime) error types
        reason = (str(e).strip().splitlines() or [""])[0][:200]
        return _row(record, expected, engine.name, error=f"{engine.name} failed on {path}: {type(e).__name__} {reason}")
    return _row(record, expected, engine.name, ocr_text=text)


def image_rows(records: Sequence[dict], base_dir: str | os.PathLike) -> list[dict]:
    """The rows of an evaluation without OCR: one per record, ``engine`` empty, ``error`` naming a missing or
    unreadable image."""
    return [_row(record, expected_text(record), "", error=image_problem(Path(base_dir) / record["image"]))
            for record in records]


def per_image_columns(records: Sequence[dict], ocr: bool, extra: Sequence[str] = ()) -> list[str]:
    """The per_image.csv columns: the record's, the OCR columns when ``ocr``, ``extra`` (the scorers'), ``error``."""
    param_keys = sorted({key for r in records for key in flatten_params(r.get("params") or {})})
    columns = ["image", "model", "method", "seed", "setting", *[f"param.{k}" for k in param_keys]]
    columns += ["prompt", "expected_text", "engine", *(["ocr_text", *OCR_METRICS] if ocr else []), *extra, "error"]
    return columns


def engine_list(engine: OCREngine | Sequence[OCREngine]) -> list[OCREngine]:
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
    # a row cut short by a crash has missing fields (None): its OCR text may be cut too, so it is read again
    usable = [r for r in rows if None not in r.values() and r.get("image") and not r.get("error")]
    return {r["image"]: r["ocr_text"] for r in usable if r.get("engine") == engine_name}


def _text(engine: OCREngine, path: Path, record: dict) -> str:
    """The engine's text of the record's image; of a video's frame strip, one line per frame."""
    n = len(record.get("strip_frames") or ())
    if not n:
        return engine.read(path)
    from PIL import Image

    with Image.open(path) as strip:
        frames = strip_frames(strip.convert("RGB"), n)
    return FRAME_SEPARATOR.join(" ".join(engine.read(frame).split()) for frame in frames)


def _scores(record: dict, ocr_text: str, expected: list[str]) -> dict[str, float]:
    """Every OCR metric of the record's text; of a video, the mean over its frames."""
    if not record.get("strip_frames"):
        return score(ocr_text, expected)
    frames = [score(text, expected) for text in ocr_text.split(FRAME_SEPARATOR)]
    return {metric: sum(f[metric] for f in frames) / len(frames) for metric in frames[0]}


def _row(record: dict, expected: list[str], engine_name: str, ocr_text: str | None = None, error: str = "") -> dict:
    """One per_image.csv row; OCR metrics only for an engine's row without error."""
    params = flatten_params(record.get("params") or {})
    row = {
        "image": record["image"],
        "model": record.get("model", ""),
        "method": record["method"],
        "seed": record.get("seed"),
        "setting": setting_text(params),
        **{f"param.{k}": v for k, v in params.items()},
        "prompt": record["prompt"],
        "expected_text": " | ".join(expected),
        "engine": engine_name,
        "error": error,
    }
    if engine_name:
        row["ocr_text"] = ocr_text
        if not error:
            row.update(_scores(record, ocr_text, expected))
    return row
