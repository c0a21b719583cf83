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
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from .activations import save_capture
from .denoiser import Denoiser, Pass
from .guidance import GuidanceMethod, cfg
from .io import atomic_write, atomic_write_json
from .prompts import PromptPair
from .sampling import denoise

TRAJECTORIES = ("independent", "shared")


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
    guidance: float  # SD3: CFG scale (CFG runs when > 1); FLUX: distilled guidance embedding
    max_sequence_length: int
    trajectory: str = "independent"
    save_layers: tuple[str, ...] = ()
    save_steps: tuple[int, ...] = ()  # sorted, non-negative step indices


class PairTrajectory(GuidanceMethod):
    """Denoise the two prompts of a pair together; rows are ``[a, b]`` or ``[uncond, a, b]`` with CFG."""

    name = "capture"

    def __init__(self, trajectory: str, cfg_scale: float | None):
        if trajectory not in TRAJECTORIES:
            raise ValueError(f"--trajectory must be one of {', '.join(TRAJECTORIES)}, got {trajectory!r}")
        self.trajectory = trajectory
        self.cfg_scale = cfg_scale if cfg_scale is not None and cfg_scale > 1 else None
        a, b = (1, 2) if self.cfg_scale else (0, 1)
        if trajectory == "independent":
            lat = [Pass(a, latent=0), Pass(b, latent=1)]
            self._passes = ([Pass(0, latent=0), Pass(0, latent=1)] if self.cfg_scale else []) + lat
        else:
            self._passes = ([Pass(0)] if self.cfg_scale else []) + [Pass(a), Pass(b)]
        # Lanes are the distinct passes in order; these two hold the pair's conditional predictions.
        self.pair_lanes = (len(self._passes) - 2, len(self._passes) - 1)

    def rows(self, pair: PromptPair) -> list[str]:
        return ([""] if self.cfg_scale else []) + [pair.negative, pair.positive]

    def passes(self, step, num_steps, num_rows):
        return self._passes

    def combine(self, preds, step, num_steps):
        a, b = self.pair_lanes
        if self.trajectory == "independent":
            c = preds[[a, b]]
            return cfg(preds[[0, 1]], c, self.cfg_scale) if self.cfg_scale else c
        return cfg(preds[0:1], preds[a : a + 1], self.cfg_scale) if self.cfg_scale else preds[a : a + 1]


class CosineRecorder:
    """Forward hooks on every block: ``cosine[step, layer]`` between the two pair lanes' image tokens."""

    def __init__(self, denoiser: Denoiser, lanes: tuple[int, int], steps: int, save_layers=(), save_steps=()):
        self.denoiser, self.lanes = denoiser, lanes
        self.cosine = torch.full((steps, len(denoiser.blocks)), float("nan"), device=denoiser.device)
        self.save_layers, self.save_steps = set(save_layers), list(save_steps)
        self.saved: dict[str, list[torch.Tensor]] = {name: [] for name in save_layers}
        self.step = 0

    def _hook(self, index: int, name: str):
        def hook(module, args, kwargs, output):
            x = output[1]  # every block returns (encoder_hidden_states, image hidden_states)
            a, b = x[self.lanes[0]].float().flatten(), x[self.lanes[1]].float().flatten()
            self.cosine[self.step, index] = F.cosine_similarity(a, b, dim=0)
            if name in self.save_layers and self.step in self.save_steps:
                self.saved[name].append(x[list(self.lanes)].detach().to("cpu", torch.float32))

        return hook

    @contextmanager
    def hooks(self) -> Iterator["CosineRecorder"]:
        handles = [
            block.register_forward_hook(self._hook(i, name), with_kwargs=True)
            for i, (name, block) in enumerate(self.denoiser.blocks)
        ]
        try:
            yield self
        finally:
            for handle in handles:
                handle.remove()

    def on_step(self, step: int, t: torch.Tensor) -> None:
        self.step = step


def capture_pair(denoiser: Denoiser, pair: PromptPair, config: CaptureConfig) -> dict[str, torch.Tensor]:
    """Cosine [steps, layers] (and raw activations) for one pair, from the noise of ``config.seed``."""
    method = PairTrajectory(config.trajectory, config.guidance if denoiser.family == "sd3" else None)
    cond = denoiser.encode(method.rows(pair), config.max_sequence_length)
    noise = denoiser.initial_noise(config.seed, config.height, config.width)
    latents = noise.repeat(2, *[1] * (noise.ndim - 1)) if config.trajectory == "independent" else noise
    timesteps = denoiser.timesteps(config.steps, noise)
    recorder = CosineRecorder(denoiser, method.pair_lanes, config.steps, config.save_layers, config.save_steps)
    with recorder.hooks():
        denoise(denoiser, method, cond, latents, timesteps, on_step=recorder.on_step)
    out = {"cosine": recorder.cosine.cpu(), "timesteps": timesteps.float().cpu()}
    for name, tensors in recorder.saved.items():
        out[f"activations.{name}"] = torch.stack(tensors)
    return out


def _config_hash(config: CaptureConfig, pairs: Sequence[PromptPair]) -> str:
    """Identity of a capture run: its settings and the prompt texts (a partial run resumes only under both)."""
    key = [asdict(config), [[p.negative, p.positive] for p in pairs]]
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
    denoiser: Denoiser, pairs: Sequence[PromptPair], config: CaptureConfig, out: str | Path, progress: bool = True
) -> Path:
    """Capture every pair and write ``out`` (safetensors). Resumable: finished pairs are kept in
    ``<out>.partial/`` and skipped when the same command is run again; merged at the end."""
    out = Path(out)
    partial = out.with_name(out.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    stamp = partial / "config.json"
    run_hash = _config_hash(config, pairs)
    if stamp.exists() and json.loads(stamp.read_text())["hash"] != run_hash:
        raise ValueError(
            f"{partial} holds an unfinished capture with different settings or prompts; "
            f"delete it or choose another --out"
        )
    atomic_write_json(stamp, {"hash": run_hash, "config": asdict(config)})
    parts = []
    for p, pair in enumerate(tqdm(pairs, desc="pairs", disable=not progress)):
        part = partial / f"pair_{p:05d}.safetensors"
        if not part.exists():
            tensors = capture_pair(denoiser, pair, config)
            atomic_write(part, lambda tmp: save_file(tensors, tmp))
        parts.append(load_file(str(part)))
    merged = {key: torch.stack([part[key] for part in parts]) for key in parts[0] if key != "timesteps"}
    timesteps = parts[0]["timesteps"].tolist()
    if config.save_steps:
        merged["activation_steps"] = torch.tensor(config.save_steps)
    metadata = {
        **asdict(config),
        "family": denoiser.family,
        "layer_names": denoiser.layer_names,
        "num_double_blocks": len(denoiser.transformer.transformer_blocks),
        "timesteps": timesteps,
        "prompts": [[p.negative, p.positive] for p in pairs],
    }
    save_capture(out, merged, metadata)
    shutil.rmtree(partial)
    return out
