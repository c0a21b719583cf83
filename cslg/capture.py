"""Activation capture (step 1): per pair, step and block, the cosine similarity between the image-token
outputs of the two prompts of a pair, reduced online in forward hooks (nothing else is stored unless raw
activations of chosen layers are asked for).

The two prompts run together in one batch. ``independent``: each prompt denoises its own trajectory from
the same noise (as the paper). ``shared``: both are evaluated on one latent trajectory, the one driven by
the first prompt of the pair (``no_text`` / ``negative``), so differences come from the prompt alone.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .activations import read_metadata, save_capture
from .executor import INPUT, Pass
from .families.base import Adapter
from .io import atomic_write, atomic_write_json, remove_stale_temps
from .methods.base import Method, cfg
from .prompts import PromptPair
from .options import ROWS, SITES, TRAJECTORIES
from .provenance import versions
from .sampling import denoise, prepare

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
    rows: str = "cond"  # "cond": compare the conditional rows; "all": average with the CFG rows (upstream, SD3)
    save_layers: tuple[str, ...] = ()
    save_steps: tuple[int, ...] = ()  # sorted, non-negative step indices


@dataclass(frozen=True)
class PairTrajectory(Method):
    """Denoise the two prompts of a pair together: passes ``a`` (negative) and ``b`` (positive), plus their
    unconditional passes with CFG (``cfg_scale`` > 1, SD3). ``independent``: latent 0 follows ``a``, latent 1
    follows ``b``; ``shared``: one latent, driven by ``a``."""

    trajectory: str = "independent"
    cfg_scale: float | None = None
    name = "capture"

    def __post_init__(self):
        if self.trajectory not in TRAJECTORIES:
            raise ValueError(f"--trajectory must be one of {', '.join(TRAJECTORIES)}, got {self.trajectory!r}")
        if self.cfg_scale is not None and not self.cfg_scale > 1:
            object.__setattr__(self, "cfg_scale", None)

    def rows(self, pair: PromptPair) -> dict[str, str]:
        return ({"uncond": ""} if self.cfg_scale else {}) | {"a": pair.negative, "b": pair.positive}

    def passes(self, step):
        if self.trajectory == "shared":
            return ({"uncond": Pass("uncond")} if self.cfg_scale else {}) | {"a": Pass("a"), "b": Pass("b")}
        uncond = {"uncond_a": Pass("uncond", latent=0), "uncond_b": Pass("uncond", latent=1)} if self.cfg_scale else {}
        return uncond | {"a": Pass("a", latent=0), "b": Pass("b", latent=1)}

    def combine(self, preds, step):
        if self.trajectory == "shared":
            return cfg(preds["uncond"], preds["a"], self.cfg_scale) if self.cfg_scale else preds["a"]
        c = torch.cat([preds["a"], preds["b"]])
        return cfg(torch.cat([preds["uncond_a"], preds["uncond_b"]]), c, self.cfg_scale) if self.cfg_scale else c


class CosineRecorder:
    """Block observer: ``cosine[step, layer]`` between the image tokens of the pair's passes at the capture site
    after each block, and ``input_cosine[step]`` for the tokens entering the first block.

    ``site``: ``"block"``, the block's image-token output (residual stream); ``"attn"``, the image-token attention
    output before gating and residual (the paper's point: forward hooks on the adapter's ``attention_output``).
    ``rows``: the lane pairs compared, their cosines averaged (``[("a", "b")]``; upstream's SD3 with CFG also
    compares the unconditional rows).
    """

    def __init__(self, adapter: Adapter, steps: int, site: str, rows: Sequence[tuple[str, str]],
                 save_layers=(), save_steps=()):
        self.adapter, self.site, self.rows = adapter, site, list(rows)
        self.index = {name: i for i, name in enumerate(adapter.layer_names)}
        self.cosine = torch.full((steps, len(adapter.layer_names)), float("nan"), device=adapter.device)
        self.input_cosine = torch.full((steps,), float("nan"), device=adapter.device)
        self.save_layers, self.save_steps = set(save_layers), list(save_steps)
        self.saved: dict[str, list[torch.Tensor]] = {name: [] for name in save_layers}
        self.site_outputs: dict[str, tuple[Callable, torch.Tensor]] = {}

    @contextmanager
    def hooks(self) -> Iterator[None]:
        """With ``site="attn"``: keep the latest attention output of every block until its observer reads it."""
        handles = []
        if self.site == "attn":
            for name, block, convention in self.adapter.blocks:
                module, take = self.adapter.attention_output(block, convention)
                handles.append(module.register_forward_hook(
                    lambda m, args, out, name=name, take=take: self.site_outputs.__setitem__(name, (take, out)) and None
                ))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def at_step(self, step: int):
        def observe(layer: str, streams, lanes) -> None:
            image = streams.image
            if layer != INPUT and self.site == "attn":
                take, output = self.site_outputs.pop(layer)
                image = take(output, streams.image.shape[1])
            pairs = [image[[lanes[a], lanes[b]]] for a, b in self.rows]
            similarity = torch.stack([F.cosine_similarity(x[0].float().flatten(), x[1].float().flatten(), dim=0)
                                      for x in pairs]).mean()
            if layer == INPUT:
                self.input_cosine[step] = similarity
                return
            self.cosine[step, self.index[layer]] = similarity
            if layer in self.save_layers and step in self.save_steps:
                self.saved[layer].append(pairs[-1].detach().to("cpu", torch.float32))

        return observe


def capture_pair(adapter: Adapter, pair: PromptPair, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """Cosine [steps, layers] (and raw activations) for one pair, from the noise of ``config.seed``."""
    method = PairTrajectory(config.trajectory, None if adapter.has_distilled_guidance else config.guidance)
    run = prepare(adapter, method.rows(pair), config.seed, config.steps, config.height, config.width,
                  config.max_sequence_length)
    noise = run.latents
    latents = noise.repeat(2, *[1] * (noise.ndim - 1)) if config.trajectory == "independent" else noise
    rows = [("a", "b")]
    if config.rows == "all" and method.cfg_scale and config.trajectory == "independent":
        rows = [("uncond_a", "uncond_b"), ("a", "b")]  # the batch rows of upstream's two CFG pipeline calls
    recorder = CosineRecorder(adapter, config.steps, config.site, rows, config.save_layers, config.save_steps)
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
    same = all(meta.get(k) == (list(v) if isinstance(v, tuple) else v) for k, v in asdict(config).items())
    return same and meta.get("prompts") == [[p.negative, p.positive] for p in pairs]


def _config_hash(config: CaptureConfig, pairs: Sequence[PromptPair]) -> str:
    """Identity of a capture run: its settings and the prompt texts (a partial run resumes only under both)."""
    key = [asdict(config), [[p.negative, p.positive] for p in pairs], PART_FORMAT]
    return hashlib.sha1(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


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
    force: bool = False,
) -> Path:
    """Capture every pair and write ``out`` (safetensors). Resumable: finished pairs are kept in
    ``<out>.partial/`` and skipped when the same command is run again; merged at the end. A finished ``out`` of the
    same settings and prompts is kept (``force``: capture again)."""
    out = Path(out)
    if out.is_dir():
        raise ValueError(f"--out {out} is a directory: give a .safetensors file name")
    if out.is_file() and not force and _finished(out, config, pairs):
        print(f"{out} already holds this capture (same settings and prompts): kept; --force captures again")
        return out
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    stamp = partial / "config.json"
    run_hash = _config_hash(config, pairs)
    if stamp.exists():
        try:
            found = json.loads(stamp.read_text(encoding="utf-8"))
            old_hash, old_config = found["hash"], found["config"]
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"{stamp} is corrupt; delete {partial} to start the capture again") from None
        if old_hash != run_hash:
            wanted = json.loads(json.dumps(asdict(config)))  # as stored: tuples are lists
            changed = [f"{k} {old_config.get(k)!r} -> {v!r}" for k, v in wanted.items() if old_config.get(k) != v]
            what = ", ".join(changed) if changed else "the prompts"
            raise ValueError(f"{partial} holds an unfinished capture with other settings ({what}); "
                             f"run it with the same settings, or delete it, or choose another --out")
    remove_stale_temps(partial)
    remove_stale_temps(out.parent, out.name)  # a crashed final write leaves a full-size copy
    atomic_write_json(stamp, {"hash": run_hash, "config": asdict(config)})
    parts = []
    for p, pair in enumerate(tqdm(pairs, desc="pairs", disable=not progress)):
        part = partial / f"pair_{p:05d}.safetensors"
        if part.exists():
            try:
                parts.append(load_file(str(part)))
                continue
            except Exception:  # safetensors raises its own error types for a truncated file
                tqdm.write(f"warning: {part} is corrupt (an interrupted write?): capturing pair {p} again")
        tensors = capture_pair(adapter, pair, config)
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
