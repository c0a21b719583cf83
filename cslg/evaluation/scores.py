"""The scorers of ``cslg.scorers`` on a run's images, cached per image and scorer.

Per-image scorers: every value goes to ``<out>/scores/<scorer>.jsonl``, one line per image
``{"image", "sha256", "prompt", "model", "values"}`` (appended under a lock, all or nothing, as soon as a batch is
scored). An image is scored again only when no line has its path, the SHA-256 of its file, its prompt and the
scorer's model: adding a scorer later scores only that scorer, a changed image is scored again, an interrupted
run resumes. A scorer whose every image is cached is not even loaded.

Set-level scorers (FID, KID): one value set per model, method and setting (the images of that group against the
reference folder), cached in the same file under a ``group`` key that hashes the group's images, the reference
folder's listing (names, sizes, modification times) and the model.

A scorer that cannot run (its model missing, its package absent) is reported in one line and skipped; the others
still run.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from ..io import append_jsonl, file_lock, read_jsonl
from ..scorers import MissingModelError, Scorer, SetScorer, scorer_class
from .records import IMAGE_SUFFIXES, flatten_params, setting_text

SCORES_DIR = "scores"


@dataclass
class ScorerOutcome:
    """What one scorer gave: per-image ``values`` (image -> column -> value) or set-level ``groups`` ((model,
    method, setting) -> key -> value), how many were freshly scored, and ``problem`` (one line) when it could not
    run; ``model`` and ``options`` as it ran."""

    name: str
    columns: tuple[str, ...] = ()
    higher_is_better: bool = True
    values: dict[str, dict[str, float]] = field(default_factory=dict)
    groups: dict[tuple[str, str, str], dict[str, float]] = field(default_factory=dict)
    set_level: bool = False
    scored: int = 0
    problem: str = ""
    model: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    citation: str = ""


class ImageFiles(Sequence):
    """The images of ``paths``, each opened when it is indexed (a slice gives a list), so a set of tens of thousands
    of images is never in memory at once."""

    def __init__(self, paths: Sequence[str | os.PathLike]):
        self.paths = [Path(p) for p in paths]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(len(self)))]
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return image.copy()


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class ScoreCache:
    """``<folder>/<scorer>.jsonl``: key -> values, read once (a line torn by a crash is cut off), appended under a
    lock so several processes can share it."""

    def __init__(self, folder: str | os.PathLike, scorer: str):
        self.path = Path(folder) / f"{scorer}.jsonl"
        self.lock = self.path.with_name(self.path.name + ".lock")
        self.entries: dict[str, dict[str, float]] = {}
        if self.path.is_file():
            with file_lock(self.lock):
                for _, line in read_jsonl(self.path, torn="repair"):
                    if isinstance(line.get("values"), dict):
                        self.entries[self.key(line)] = line["values"]

    @staticmethod
    def key(entry: dict) -> str:
        return json.dumps([entry.get(k) for k in ("image", "sha256", "prompt", "group", "model")])

    def get(self, entry: dict) -> dict[str, float] | None:
        return self.entries.get(self.key(entry))

    def add(self, entry: dict, values: dict[str, float]) -> None:
        with file_lock(self.lock):
            append_jsonl(self.path, {**{k: v for k, v in entry.items() if v is not None}, "values": values})
        self.entries[self.key(entry)] = values


def scorer_model(name: str, models: dict[str, str] | None) -> str:
    """The model a scorer ``name`` runs: the given one, or its class's default."""
    given = (models or {}).get(name)
    return str(given) if given is not None else scorer_class(name).default_model


def run_scorer(
    scorer: str | Scorer,
    records: Sequence[dict],
    base_dir: str | os.PathLike,
    cache_dir: str | os.PathLike,
    hashes: dict[str, str],
    models: dict[str, str] | None = None,
    device: Any = None,
    batch_size: int | None = None,
    reference: str | os.PathLike | None = None,
    force: bool = False,
    options: dict[str, Any] | None = None,
) -> ScorerOutcome:
    """Score ``records`` (those whose image has a hash in ``hashes``) with one scorer: a registered name (built on
    ``device`` from ``models[name]`` or its default with the keyword ``options``, only when something is left to
    score) or an instance. The options are part of the cache key."""
    name = scorer.name if isinstance(scorer, Scorer) else scorer
    try:
        cls = type(scorer) if isinstance(scorer, Scorer) else scorer_class(name)
        model = scorer.model if isinstance(scorer, Scorer) else scorer_model(name, models)
    except ImportError as e:
        return ScorerOutcome(name, problem=f"{name}: cannot be imported ({e})")
    outcome = ScorerOutcome(name, tuple(cls.columns) or (name,), cls.higher_is_better,
                            set_level=issubclass(cls, SetScorer), model=model, options=dict(options or {}),
                            citation=cls.citation)
    cache = ScoreCache(cache_dir, name)
    # the model as the cache knows it: other options, other values
    cache_model = f"{model} {json.dumps(options, sort_keys=True)}" if options else model

    def build() -> Scorer:
        if isinstance(scorer, Scorer):
            return scorer
        sizes = {} if batch_size is None else {"batch_size": batch_size}
        try:
            return cls(model=model, device=device, **sizes, **(options or {}))
        except TypeError as e:  # an option the scorer does not take
            raise ValueError(f"{name}: {e} (options: {', '.join(options or {}) or 'none'})") from None

    try:
        if outcome.set_level:
            if reference is None:
                raise ValueError(f"{name}: a set-level scorer needs a reference folder (--reference DIR)")
            _score_groups(outcome, build, cache, records, base_dir, hashes, cache_model, Path(reference), force)
        else:
            _score_images(outcome, build, cache, records, base_dir, hashes, cache_model, force)
    except (MissingModelError, ImportError, ValueError) as e:
        outcome.problem = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if not outcome.problem.startswith(f"{name}:"):
            outcome.problem = f"{name}: {outcome.problem}"
    return outcome


def _score_images(outcome: ScorerOutcome, build: Callable[[], Scorer], cache: ScoreCache, records: Sequence[dict],
                  base_dir: str | os.PathLike, hashes: dict[str, str], model: str, force: bool) -> None:
    pending = []
    for record in records:
        if record["image"] not in hashes:
            continue
        entry = {"image": record["image"], "sha256": hashes[record["image"]], "prompt": record["prompt"], "model": model}
        cached = None if force else cache.get(entry)
        if cached is None:
            pending.append((record, entry))
        else:
            outcome.values[record["image"]] = cached
    if not pending:
        return
    from PIL import Image

    scorer = build()
    progress = tqdm(total=len(pending), desc=f"score ({outcome.name})", unit="image")
    for start in range(0, len(pending), scorer.batch_size):
        batch = pending[start:start + scorer.batch_size]
        images = []
        for record, _ in batch:
            with Image.open(Path(base_dir) / record["image"]) as opened:
                images.append(opened.copy())
        details = scorer.details(images, [record["prompt"] for record, _ in batch])
        for (record, entry), values in zip(batch, details):
            values = {k: float(v) for k, v in values.items()}
            cache.add(entry, values)
            outcome.values[record["image"]] = values
        outcome.scored += len(batch)
        progress.update(len(batch))
    progress.close()


def group_key(record: dict) -> tuple[str, str, str]:
    """(model, method, setting) of a record, as the per_image rows' ``model``, ``method`` and ``setting``."""
    return record.get("model", ""), record["method"], setting_text(flatten_params(record.get("params") or {}))


def reference_listing(reference: Path) -> str:
    """A hash of the reference folder's image files (relative names, sizes and modification times; hashing the
    contents of tens of thousands of reference images on every evaluation would cost more than it saves): the
    reference part of a set-level cache key."""
    if not reference.is_dir():
        raise ValueError(f"--reference {reference}: no such folder")
    files = sorted(p for p in reference.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise ValueError(f"--reference {reference}: holds no images ({', '.join(IMAGE_SUFFIXES)})")
    listing = [(p.relative_to(reference).as_posix(), p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    return hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def _score_groups(outcome: ScorerOutcome, build: Callable[[], Scorer], cache: ScoreCache, records: Sequence[dict],
                  base_dir: str | os.PathLike, hashes: dict[str, str], model: str, reference: Path,
                  force: bool) -> None:
    listing = reference_listing(reference)
    groups: dict[tuple[str, str, str], list[dict]] = {}
    for record in records:
        if record["image"] in hashes:
            groups.setdefault(group_key(record), []).append(record)
    scorer = None
    for key, members in groups.items():
        images = sorted((r["image"], hashes[r["image"]]) for r in members)
        entry = {"group": hashlib.sha256(json.dumps([images, listing]).encode()).hexdigest(), "model": model}
        cached = None if force else cache.get(entry)
        if cached is None:
            scorer = scorer or build()
            files = ImageFiles([Path(base_dir) / r["image"] for r in members])
            cached = {k: float(v) for k, v in scorer.score_set(files, reference).items()}
            cache.add({**entry, "method": key[1], "setting": key[2]}, cached)
            outcome.scored += len(members)
        outcome.groups[key] = cached
