"""The inputs of step 4: a run folder's manifest or a plain folder of images with a prompt file, as records (one
dict per image: image path relative to the folder, prompt, method, seed, params, model, expected text)."""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path, PurePosixPath
from typing import Any, Iterable

from ..io import read_jsonl
from ..prompts import load_generation_prompts
from ..text import extract_quoted, normalize_text, prompt_slug

MANIFEST = "manifest.jsonl"
REQUIRED_KEYS = ("image", "prompt", "method")
# Params that vary per image, not per setting (matched on the last component of a flattened key).
PER_IMAGE_PARAMS = frozenset({"seed", "index", "prompt_index", "prompt", "image", "expected_text"})
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
MAPPING_RULE = (
    "an image maps to a prompt when its path below the folder (without extension) contains "
    "prompt_slug(prompt), or else when its file name starts with the 0-based prompt index "
    "followed by '_' or nothing (0003_cslg.png, 12.png)"
)


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
    image = PurePosixPath(record["image"].replace("\\", "/"))
    if image.is_absolute() or ".." in image.parts or re.match(r"^[A-Za-z]:", record["image"]) or not image.parts:
        raise ValueError(f"{where}: image {record['image']!r} is not a path inside the run folder")
    seed = record.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"{where}: 'seed' must be an integer or null, not {seed!r}")
    bad = [k for k, v in flatten_params(record.get("params", {})).items() if isinstance(v, float) and not math.isfinite(v)]
    if bad:
        raise ValueError(f"{where}: param {bad[0]!r} is not a finite number")


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


def setting_text(flat_params: dict[str, Any]) -> str:
    """The ``setting`` column of a per_image row: ``key=value`` of ``setting_params``, joined by commas."""
    return ", ".join(f"{k}={v}" for k, v in setting_params(flat_params).items())
