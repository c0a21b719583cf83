"""Capture (step 1) for every finder. ``contrast``: per pair, step and block, the cosine similarity between the
image-token outputs of the two prompts of a pair, reduced online by a block observer (nothing else is stored unless
raw activations of chosen layers are asked for). ``ablation`` / ``patching``: the causal measures of
``cslg.capture.finders``. Every finder writes the same file format (``finder`` in the metadata).

The two prompts run together in one batch. ``independent``: each prompt denoises its own trajectory from
the same noise (as the paper). ``shared``: both are evaluated on one latent trajectory, the one driven by
the first prompt of the pair (``no_text`` / ``negative``), so differences come from the prompt alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from ..families.base import Adapter
from ..guidance.sampling import denoise, prepare
from ..io import atomic_write, file_lock, remove_stale_temps, settings_stamp
from ..prompts import PromptPair
from ..provenance import versions
from .files import read_metadata, save_capture
from .finders import check_config, probe_pair
from .recorder import CosineRecorder
from .trajectory import PairTrajectory

PART_FORMAT = 2  # per-pair files hold input_cosine since format 2


@dataclass(frozen=True)
class CaptureConfig:
    """Everything that shapes a capture; stored as the file's metadata."""

    model: str
    prompts_file: str
    pairs: int
    steps: int
    seed: int
    height: int
    width: int
    guidance: float  # CFG scale (CFG runs when > 1); the distilled guidance embedding where the model has one
    max_sequence_length: int
    trajectory: str = "independent"
    site: str = "block"  # "block": residual stream after the block; "attn": attention output (the paper's point)
    compare: str = "cond"  # "cond": compare the conditional passes; "all": average with the CFG ones (upstream, SD3)
    save_layers: tuple[str, ...] = ()
    save_steps: tuple[int, ...] = ()  # sorted, non-negative step indices
    finder: str = "contrast"  # contrast / ablation / patching (cslg.options.FINDERS)


def capture_pair(adapter: Adapter, pair: PromptPair, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """Cosine [steps, layers] (and raw activations) for one pair, from the noise of ``config.seed``."""
    method = PairTrajectory(config.trajectory, None if adapter.has_distilled_guidance else config.guidance)
    run = prepare(adapter, method.conditions(pair), config.seed, config.steps, config.height, config.width,
                  config.max_sequence_length)
    noise = run.latents
    latents = noise.repeat(2, *[1] * (noise.ndim - 1)) if config.trajectory == "independent" else noise
    compared = [("a", "b")]
    if config.compare == "all" and method.cfg_scale and config.trajectory == "independent":
        compared = [("uncond_a", "uncond_b"), ("a", "b")]  # the batch rows of upstream's two CFG pipeline calls
    recorder = CosineRecorder(adapter, config.steps, config.site, compared, config.save_layers, config.save_steps)
    with recorder.hooks():
        denoise(adapter, method, run, latents, observe=recorder.at_step)
    out = {"cosine": recorder.cosine.cpu(), "input_cosine": recorder.input_cosine.cpu(),
           "timesteps": run.timesteps.float().cpu()}
    for name, tensors in recorder.saved.items():
        out[f"activations.{name}"] = torch.stack(tensors)
    return out


def _finished(out: Path, config: CaptureConfig, pairs: Sequence[PromptPair]) -> bool:
    """Whether ``out`` is a capture of exactly ``config`` and ``pairs``."""
    try:
        meta = read_metadata(out)
    except (FileNotFoundError, ValueError):
        return False
    meta.setdefault("finder", "contrast")  # written before the finders existed
    same = all(meta.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items())
    return same and meta.get("prompts") == [[p.negative, p.positive] for p in pairs]


def run_settings(config: CaptureConfig, pairs: Sequence[PromptPair]) -> dict:
    """What a partial capture resumes only under: its settings, a digest of the prompt texts and the part format."""
    prompts = json.dumps([[p.negative, p.positive] for p in pairs]).encode()
    return {**asdict(config), "prompts_sha1": hashlib.sha1(prompts).hexdigest()[:12], "part_format": PART_FORMAT}


def resolve_steps(steps: Sequence[int], num_steps: int, flag: str = "--save-steps") -> tuple[int, ...]:
    """Step indices (negative counts from the end, as in Python) as a sorted tuple of non-negative ints."""
    out = set()
    for step in steps:
        if not -num_steps <= step < num_steps:
            raise ValueError(f"{flag}: step {step} is out of range for {num_steps} steps")
        out.add(step % num_steps)
    return tuple(sorted(out))


def run_capture(
    adapter: Adapter, pairs: Sequence[PromptPair], config: CaptureConfig, out: str | Path, progress: bool = True,
    force: bool = False, max_lanes: int | None = None,
) -> Path:
    """Capture every pair with ``config.finder`` and write ``out`` (safetensors). Resumable: finished pairs are kept
    in ``<out>.partial/`` and skipped when the same command is run again; merged at the end. A finished ``out`` of
    the same settings and prompts is kept (``force``: capture again). ``max_lanes``: the causal finders' cap on the
    passes of one forward (default: from the free GPU memory, none on CPU)."""
    check_config(config)
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: give a .safetensors file name")
    with file_lock(out.with_name(out.name + ".lock"), wait=False, held_by=f"another capture writing {out}"):
        return _capture(adapter, pairs, config, out, progress, force, max_lanes)


def _capture(adapter: Adapter, pairs: Sequence[PromptPair], config: CaptureConfig, out: Path, progress: bool,
             force: bool, max_lanes: int | None) -> Path:
    if out.is_file() and not force and _finished(out, config, pairs):
        print(f"{out} already holds this capture (same settings and prompts): kept; --force captures again")
        return out
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    settings_stamp(partial / "config.json", run_settings(config, pairs), "an unfinished capture",
                   f"run it with the same settings, delete {partial} to start again, or choose another --out",
                   f"delete {partial} to start the capture again")
    remove_stale_temps(partial)
    remove_stale_temps(out.parent, out.name)  # a crashed final write leaves a full-size copy
    parts = []
    for p, pair in enumerate(tqdm(pairs, desc="pairs", disable=not progress)):
        part = partial / f"pair_{p:05d}.safetensors"
        if part.exists():
            try:
                parts.append(load_file(str(part)))
                continue
            except Exception:  # safetensors raises its own error types for a truncated file
                tqdm.write(f"warning: {part} is corrupt (an interrupted write?): capturing pair {p} again")
        tensors = capture_pair(adapter, pair, config) if config.finder == "contrast" else \
            probe_pair(adapter, pair, config, max_lanes)
        atomic_write(part, lambda tmp: save_file(tensors, tmp))
        parts.append(load_file(str(part)))
    merged = {key: torch.stack([part[key] for part in parts]) for key in parts[0] if key != "timesteps"}
    timesteps = parts[0]["timesteps"].tolist()
    if config.save_steps:
        merged["activation_steps"] = torch.tensor(config.save_steps)
    metadata = {
        **asdict(config),
        "family": adapter.name,
        "layer_names": adapter.layer_names,
        "block_groups": adapter.block_groups(),
        "versions": versions(),
        "timesteps": timesteps,
        "prompts": [[p.negative, p.positive] for p in pairs],
    }
    save_capture(out, merged, metadata)
    shutil.rmtree(partial)
    return out
