"""The final-experiment grid (step 3): prompts x seeds x methods x scales x layer sets, written to a
run folder that eval.py scores.

Run folder::

    <out>/manifest.jsonl                 one JSON object per image (merged from all shards)
    <out>/manifests/shard-I-of-N.jsonl   what each shard wrote
    <out>/images/<prompt-slug>/seed<S>_<method tag>.png    (a video family: the frame strip PNG, and the video
    <out>/images/<prompt-slug>/seed<S>_<method tag>.webp    next to it, lossless animated WebP)
    <out>/contact_sheets/<prompt-slug>_seed<S>.png

The grid is split by (prompt, seed) groups, so every shard writes whole contact sheets. Reruns skip
finished images; every file is written atomically, so an interruption loses at most the image in flight.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

from tqdm.auto import tqdm

from ..families.base import Adapter
from ..guidance.sampling import DegenerateMethodWarning, sample_batch
from ..io import (
    LockedError, append_jsonl, atomic_write, atomic_write_text, file_lock, image_problem, read_jsonl,
    remove_stale_temps, settings_stamp,
)
from ..methods.base import Method, Request
from ..prompts import GenerationPrompt
from ..provenance import versions
from ..text import prompt_slug
from ..video import VIDEO_SUFFIX, frame_strip, strip_indices, write_video
from .contact_sheet import contact_sheet
from .naming import method_label, method_tag


@dataclass(frozen=True)
class Job:
    prompt_index: int
    prompt: GenerationPrompt
    seed: int
    method: Method

    @property
    def image(self) -> str:
        return f"images/{prompt_slug(self.prompt.prompt)}/seed{self.seed}_{method_tag(self.method)}.png"

    @property
    def video(self) -> str:
        """Where a video family's video goes (``image`` holds its frame strip)."""
        return self.image[: -len(".png")] + VIDEO_SUFFIX


def enumerate_groups(
    prompts: Sequence[GenerationPrompt], seeds: Sequence[int], methods: Sequence[Method]
) -> list[list[Job]]:
    """Jobs grouped by (prompt, seed), in prompt-then-seed order; each group holds every method."""
    return [[Job(i, p, seed, m) for m in methods] for i, p in enumerate(prompts) for seed in seeds]


def parse_shard(text: str | None, env: os._Environ | dict = os.environ) -> tuple[int, int]:
    """``(index, count)`` from ``--shard i/n``, else from ``accelerate launch`` (RANK/WORLD_SIZE), else from a
    SLURM array job (SLURM_ARRAY_TASK_ID - SLURM_ARRAY_TASK_MIN of SLURM_ARRAY_TASK_COUNT), else ``(0, 1)``."""
    if text:
        try:
            index, count = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--shard must look like i/n (e.g. 0/4), got {text!r}") from None
    elif _env_int(env, "WORLD_SIZE", 1) > 1:
        index, count = _env_int(env, "RANK", 0), _env_int(env, "WORLD_SIZE", 1)
    elif "SLURM_ARRAY_TASK_ID" in env and "SLURM_ARRAY_TASK_COUNT" in env:
        index = _env_int(env, "SLURM_ARRAY_TASK_ID", 0) - _env_int(env, "SLURM_ARRAY_TASK_MIN", 0)
        count = _env_int(env, "SLURM_ARRAY_TASK_COUNT", 1)
    else:
        return 0, 1
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard index {index} is out of range for {count} shards")
    return index, count


def _env_int(env, name: str, default: int) -> int:
    try:
        return int(env.get(name, default))
    except ValueError:
        raise ValueError(f"environment variable {name}={env[name]!r} is not an integer") from None


def shard_groups(groups: list[list[Job]], index: int, count: int) -> list[list[Job]]:
    """Round-robin split: group ``g`` goes to shard ``g % count`` (disjoint and complete)."""
    return groups[index::count]


@dataclass(frozen=True)
class ImageSettings:
    """Per-image settings shared by the grid (recorded in every manifest entry's ``params``)."""

    steps: int
    height: int
    width: int
    max_sequence_length: int
    negative_prompt: str = ""
    guidance: float | None = None  # FLUX's distilled guidance embedding; None for SD3
    frames: int | None = None  # a video family's frames per video; None for images

    def stamp(self) -> dict:
        """What ``run.json`` records (``frames`` only for videos, so image run folders keep their stamps)."""
        return {k: v for k, v in asdict(self).items() if not (k == "frames" and v is None)}


def manifest_record(job: Job, settings: ImageSettings, model: str, warning: str | None = None) -> dict:
    params = {
        **job.method.params(),
        "steps": settings.steps,
        "height": settings.height,
        "width": settings.width,
        "max_sequence_length": settings.max_sequence_length,
        "negative_prompt": settings.negative_prompt,
    }
    if settings.guidance is not None:
        params["guidance"] = settings.guidance
    if settings.frames is not None:
        params["frames"] = settings.frames
    record = {"image": job.image, "prompt": job.prompt.prompt, "method": job.method.name, "seed": job.seed,
              "params": params, "model": model}
    if job.method.variant is not None:
        record["variant"] = job.method.variant
    if settings.frames is not None:  # the image is the frame strip of these frames of the video
        record["video"] = job.video
        record["strip_frames"] = strip_indices(settings.frames)
    if job.prompt.expected_text is not None:
        record["expected_text"] = list(job.prompt.expected_text)
    if job.prompt.concepts is not None:
        record["concepts"] = list(job.prompt.concepts)
    if warning:
        record["warnings"] = [warning]
    record["versions"] = versions()
    return record


def merge_manifests(out: Path, images: set[str] | None = None) -> Path:
    """Rewrite ``manifest.jsonl`` as the union of all shard manifests (one entry per image, the last row wins),
    under a lock, so shards finishing at the same time cannot lose each other's rows. ``images``: the current grid's
    images; rows of other cells (a prompt removed from the prompt file, a method left out) stay in the shard
    manifests but not in ``manifest.jsonl``, so step 4 scores exactly this grid."""
    with file_lock(out / "manifests" / ".merge.lock"):
        records: dict[str, dict] = {}
        for shard_file in sorted((out / "manifests").glob("shard-*.jsonl")):
            for _, record in read_jsonl(shard_file, torn="skip"):
                records[record["image"]] = record
        if images is not None:
            if left_out := len(set(records) - images):
                print(f"note: {left_out} image(s) of {out} belong to cells outside this grid: kept in "
                      f"{out / 'manifests'}, left out of manifest.jsonl")
            records = {image: r for image, r in records.items() if image in images}
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records.values())
        return atomic_write_text(out / "manifest.jsonl", text)


def check_run_settings(out: Path, settings: ImageSettings, model: str) -> None:
    """Write ``out/run.json``, or fail if the folder was made with another model or image settings."""
    for folder in (out, *out.parents):
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"--out {out}: {folder} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    settings_stamp(out / "run.json", {"model": model, **settings.stamp()}, "a run", "choose another --out",
                   "delete it if the folder's images were made with the current settings, or choose another --out")


def run_grid(
    adapter: Adapter,
    groups: list[list[Job]],
    settings: ImageSettings,
    out: str | Path,
    model: str,
    shard: tuple[int, int] = (0, 1),
    progress: bool = True,
    batch_size: int = 1,
) -> Path:
    """Generate this shard's groups into ``out``; returns the merged manifest path.

    ``out/run.json`` records the model and image settings: a run folder only resumes or grows (more
    prompts, seeds, methods) under the same ones, since they are not part of the image names. One process runs a
    shard at a time (a second is refused); an image that does not open (a crash mid-write) is made again; a manifest
    row whose prompt-file fields changed is rewritten; a row torn by a crash is written again. ``batch_size``: how
    many images of one method (several seeds or prompts) share one batched forward.
    """
    out = Path(out)
    if settings.frames != (adapter.frames if adapter.video else None):
        raise ValueError(f"frames: the image settings give {settings.frames}, the {adapter.name} adapter makes "
                         + (f"{adapter.frames}-frame videos" if adapter.video else "images"))
    check_run_settings(out, settings, model)
    name = f"shard-{shard[0]:03d}-of-{shard[1]:03d}"
    try:
        with file_lock(out / "manifests" / f".{name}.lock", wait=False, held_by=f"another process running shard "
                                                                              f"{shard[0]}/{shard[1]} of this folder"):
            _run_shard(adapter, shard_groups(groups, *shard), settings, out, model, out / "manifests" / f"{name}.jsonl",
                       progress, batch_size)
    except LockedError as e:
        raise ValueError(str(e)) from None
    return merge_manifests(out, {job.image for group in groups for job in group})


def _same_row(a: dict, b: dict) -> bool:
    """Manifest rows equal but for the library versions (a resume under a newer library keeps its rows)."""
    return {k: v for k, v in a.items() if k != "versions"} == {k: v for k, v in b.items() if k != "versions"}


def _request(job: Job, settings: ImageSettings) -> Request:
    return Request(job.prompt.prompt, settings.negative_prompt, job.prompt.concepts or ())


def _run_shard(adapter: Adapter, mine: list[list[Job]], settings: ImageSettings, out: Path, model: str,
               shard_manifest: Path, progress: bool, batch_size: int = 1) -> None:
    """Groups ``batch_size`` at a time: the missing images of each method across those groups in one batch, then
    their manifest rows and contact sheets (an interruption loses at most one batch)."""
    remove_stale_temps(out)
    recorded = {}
    if shard_manifest.exists():
        recorded = {r["image"]: r for _, r in read_jsonl(shard_manifest, torn="repair")}
    bar = tqdm(total=sum(len(g) for g in mine), desc=f"images ({shard_manifest.stem})", disable=not progress)
    warned: set[str] = set()
    for first in range(0, len(mine), batch_size):
        chunk = mine[first:first + batch_size]
        pending: dict[Method, list[Job]] = {}
        for job in (job for group in chunk for job in group):
            if image_problem(out / job.image):
                pending.setdefault(job.method, []).append(job)
        for method, jobs in pending.items():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DegenerateMethodWarning)  # reported below, once per setting
                images = sample_batch(adapter, method, [_request(j, settings) for j in jobs], [j.seed for j in jobs],
                                      settings.steps, settings.height, settings.width, settings.max_sequence_length)
            for job, image in zip(jobs, images):
                if settings.frames is not None:  # a video (its frames): the video, then its strip, which marks it done
                    write_video(out / job.video, image, adapter.fps)
                    image = frame_strip(image, strip_indices(len(image)))
                atomic_write(out / job.image, lambda tmp, image=image: image.save(tmp, format="PNG"))
        made = {job.image for jobs in pending.values() for job in jobs}
        for group in chunk:
            marks = []
            for job in group:
                warning = job.method.degenerate(settings.steps, job.method.conditions(_request(job, settings)))
                if warning and (message := f"{method_label(job.method)}: {warning}") not in warned:
                    warned.add(message)  # once per run and setting; every affected manifest row records it
                    tqdm.write(f"warning: {message}")
                marks.append(warning)
                record = manifest_record(job, settings, model, warning)
                if job.image not in recorded or not _same_row(recorded[job.image], record):
                    append_jsonl(shard_manifest, record)  # new, or the prompt file changed: the last row wins
                    recorded[job.image] = record
                bar.update()
            sheet = out / "contact_sheets" / f"{prompt_slug(group[0].prompt.prompt)}_seed{group[0].seed}.png"
            if made & {job.image for job in group} or not sheet.exists():
                tile = 256 if settings.frames is None else 64 * len(strip_indices(settings.frames))
                contact_sheet([out / j.image for j in group], [method_label(j.method) for j in group],
                              f"seed {group[0].seed}: {group[0].prompt.prompt}", sheet, tile=tile, marks=marks)
    bar.close()
