"""The public Python API: guidance on a pipeline you loaded with diffusers, and the layer finders. Every
argument is checked here, before anything is computed: a wrong type raises ``TypeError`` and a bad value
``ValueError``, each naming the argument."""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path
from typing import Any, Sequence

import torch
from diffusers import DiffusionPipeline

from .analysis import analyse
from .capture import CaptureConfig, load_capture, run_capture
from .families import adapter_for
from .guidance.sampling import StepCallback, sample_batch
from .methods.base import Method, Request
from .options import BASELINES, CAUSAL_SCORES, CHANGE_METRICS, FINDERS, TRAJECTORIES
from .prompts import PromptPair

OUTPUT_TYPES = ("pil", "np", "pt", "latent")
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed takes


@dataclass
class GenerationOutput:
    """What ``generate`` returns, as diffusers' pipelines do: ``images`` (a list of PIL images, an array
    ``[N, H, W, 3]``, a tensor, or the final latents for ``output_type="latent"``) and the seed of each image
    (``None`` where a generator or latents were given)."""

    images: Any
    seeds: list[int | None]


def layer_names(pipe: DiffusionPipeline) -> list[str]:
    """Every block name of ``pipe``'s transformer in execution order (``"5"``, and ``"s12"`` for FLUX's
    single-stream blocks)."""
    return list(adapter_for(pipe).layer_names)


def generate(
    pipe: DiffusionPipeline,
    prompt: str | Sequence[str],
    method: Method,
    *,
    negative_prompt: str | Sequence[str] = "",
    num_images_per_prompt: int = 1,
    seed: int | Sequence[int] | None = 0,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    latents: torch.Tensor | None = None,
    image: Any = None,
    strength: float | None = None,
    steps: int = 28,
    height: int | None = None,
    width: int | None = None,
    num_frames: int | None = None,
    concepts: Sequence[str] = (),
    max_sequence_length: int | None = None,
    guidance: float | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    output_type: str = "pil",
    return_dict: bool = True,
    progress: bool = True,
    callback: StepCallback | None = None,
) -> GenerationOutput | tuple:
    """Images of ``prompt`` (one string or a list) guided by ``method``, all in one batched forward per step.

    Image ``k`` (prompt ``k // num_images_per_prompt``) starts from the noise diffusers draws for seed ``seed + k``
    (``seed`` a list: one seed per image), or from ``generator`` (one generator, drawn from image by image, or one
    per image), or from ``latents`` (``[N, ...]`` in the pipeline's layout). ``pipe``: any supported diffusers
    pipeline, as loaded (CPU offload works). ``height``/``width``/``max_sequence_length`` default to the pipeline's
    defaults; ``num_frames``: the frames of a video family's videos (Wan: 4k+1, default 81; each video is a list
    of frames for ``output_type="pil"``, ``[N, F, H, W, 3]`` for ``"np"``); ``guidance`` is the distilled guidance
    embedding where the model has one (FLUX.1-dev: 3.5).
    ``image`` (a PIL image, or a list: one per prompt or one per image) and ``strength`` (default 0.6, as diffusers'
    img2img pipelines): image-to-image as the family's img2img pipeline does it (SD3, FLUX): the image is encoded,
    noised to the timestep ``strength`` keeps, and the last ``steps - int(steps * (1 - strength))`` steps run.
    ``concepts``: ConceptDiffusion's concepts (a list of strings). ``attention_kwargs`` go to the attention
    processors (e.g. ``{"scale": 0.8}`` for LoRA). ``callback(step, timestep, latents)`` runs after every step (as
    diffusers' ``callback_on_step_end``) and may return latents to continue from. Returns a ``GenerationOutput``
    (``.images``), or ``(images,)`` with ``return_dict=False``. An invalid layer raises ``cslg.LayerError``.
    """
    prompts = _strings(prompt, "prompt")
    negatives = _strings(negative_prompt, "negative_prompt", allow_empty=True)
    if len(negatives) not in (1, len(prompts)):
        raise ValueError(f"negative_prompt: {len(negatives)} negative prompts for {len(prompts)} prompts")
    if not isinstance(method, Method):
        raise TypeError(f"method: expected a guidance method such as cslg.CFG(7.0), got {method!r}")
    per_prompt = _integer(num_images_per_prompt, "num_images_per_prompt", 1)
    concepts = _strings(concepts, "concepts", allow_empty=True, allow_none=True) if concepts else []
    steps = _integer(steps, "steps", 1)
    if output_type not in OUTPUT_TYPES:
        raise ValueError(f"output_type: expected one of {', '.join(OUTPUT_TYPES)}, got {output_type!r}")
    if callback is not None and not callable(callback):
        raise TypeError(f"callback: expected a function (step, timestep, latents), got {callback!r}")
    n = len(prompts) * per_prompt
    seeds, noise = _noise_sources(n, seed, generator, latents)
    adapter = adapter_for(pipe, _number(guidance, "guidance", 0.0) if guidance is not None else None,
                          _integer(num_frames, "num_frames", 1) if num_frames is not None else None)
    height, width = (_integer(x, name, 1) if x is not None else default for x, name, default in
                     zip((height, width), ("height", "width"), adapter.default_height_width()))
    pixels, strength = _image_start(adapter, image, strength, latents, len(prompts), per_prompt, height, width)
    msl = _integer(max_sequence_length, "max_sequence_length", 1) if max_sequence_length is not None else \
        adapter.default_max_sequence_length
    requests = [Request(p, negatives[0] if len(negatives) == 1 else negatives[i], tuple(concepts))
                for i, p in enumerate(prompts) for _ in range(per_prompt)]
    images = sample_batch(adapter, method, requests, noise, steps, height, width, msl, output_type, attention_kwargs,
                          progress, callback, latents, pixels, strength)
    return GenerationOutput(images, seeds) if return_dict else (images,)


def find_layers(
    pipe: DiffusionPipeline,
    pairs: Sequence[tuple[str, str] | PromptPair],
    *,
    finder: str = "contrast",
    steps: int = 28,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    guidance: float | None = None,
    max_sequence_length: int | None = None,
    trajectory: str | None = None,
    metric: str = "difference",
    baseline: str = "input",
    score: str | None = None,
    step: int | None = None,
    top_k: int = 3,
    max_lanes: int | None = None,
    out: str | Path | None = None,
) -> dict:
    """Which blocks carry the feature that tells the two prompts of each pair apart? Captures every pair (the
    prompt without the feature first) with ``finder`` and ranks the blocks: the content of ``layers.json``,
    ``suggested`` the ``top_k`` best.

    ``finder``: ``contrast`` (the cosine of the two prompts' activations per block; ``trajectory``, default
    ``independent``, ``metric`` and ``baseline`` apply), ``ablation`` (each block skipped in the positive prompt's
    pass, along the negative prompt's trajectory) or ``patching`` (each block's image-token output taken from the
    negative prompt's pass); ``score`` ranks the last two (default: ``distance-ratio`` / ``distance-ratio-drop``,
    ``cslg.analysis.causal``), ``max_lanes`` caps their passes per forward (default: from the free GPU memory, none
    on CPU). ``guidance``: the distilled guidance embedding where the model has one, else the CFG scale of the
    capture (default: the family's own, as the capture scripts). ``out``: a folder to keep the capture,
    ``layers.json`` and the figures in."""
    pairs = _pairs(pairs)
    steps, seed, top_k = _integer(steps, "steps", 1), _integer(seed, "seed", 0, MAX_SEED), _integer(top_k, "top_k", 1)
    if finder not in FINDERS:
        raise ValueError(f"finder: expected one of {', '.join(FINDERS)}, got {finder!r}")
    if trajectory is None:
        trajectory = "independent" if finder == "contrast" else "shared"
    for value, name, allowed in ((trajectory, "trajectory", TRAJECTORIES), (metric, "metric", CHANGE_METRICS),
                                 (baseline, "baseline", BASELINES)):
        if value not in allowed:
            raise ValueError(f"{name}: expected one of {', '.join(allowed)}, got {value!r}")
    if finder != "contrast" and trajectory != "shared":
        raise ValueError(f"trajectory: the {finder} finder follows the negative prompt's trajectory ('shared'), "
                         f"got {trajectory!r}")
    if score is not None and score not in CAUSAL_SCORES:
        raise ValueError(f"score: expected one of {', '.join(CAUSAL_SCORES)}, got {score!r}")
    if score is not None and finder == "contrast":
        raise ValueError("score: ranks ablation and patching captures; the contrast finder ranks by metric / baseline")
    if max_lanes is not None:
        max_lanes = _integer(max_lanes, "max_lanes", 2)
    if step is not None and not (isinstance(step, Integral) and not isinstance(step, bool)):
        raise TypeError(f"step: expected a step index or None, got {step!r}")
    adapter = adapter_for(pipe, _number(guidance, "guidance", 0.0) if guidance is not None else None)
    size = adapter.default_size()
    if guidance is None:
        guidance = adapter.guidance if adapter.has_distilled_guidance else adapter.default_cfg_scale
    config = CaptureConfig(
        model=getattr(pipe, "name_or_path", None) or type(pipe).__name__, prompts_file="<find_layers>",
        pairs=len(pairs), steps=steps, seed=seed,
        height=_integer(height, "height", 1) if height is not None else size,
        width=_integer(width, "width", 1) if width is not None else size, guidance=float(guidance),
        max_sequence_length=_integer(max_sequence_length, "max_sequence_length", 1) if max_sequence_length
        is not None else adapter.default_max_sequence_length, trajectory=trajectory, finder=finder,
    )
    adapter.check_settings(config.height, config.width, config.max_sequence_length)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        capture = run_capture(adapter, pairs, config, folder / "capture.safetensors", progress=True,
                              max_lanes=max_lanes)
        result = analyse([load_capture(capture)], folder, metric, step, top_k, baseline=baseline, score=score)
    if out is None:  # the temporary folder is gone: no paths into it
        result = {k: v for k, v in result.items() if k not in ("path", "figures", "captures")}
    return result


# Argument checks -----------------------------------------------------------------------------------------------
def _strings(value: Any, name: str, allow_empty: bool = False, allow_none: bool = False) -> list[str]:
    """One string or a list / tuple of strings, as a list (``allow_empty``: empty strings are fine)."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"{name}: expected a string or a non-empty list of strings, got {value!r}")
    for i, item in enumerate(items):
        if not isinstance(item, str):
            raise TypeError(f"{name}: entry {i} is not a string: {item!r}")
        if not allow_empty and not item.strip():
            raise ValueError(f"{name}: entry {i} is an empty string")
    if name == "concepts" and isinstance(value, str):
        raise TypeError(f"concepts: expected a list of strings, got the string {value!r} (write [{value!r}])")
    return list(items)


def _integer(value: Any, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name}: expected an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise ValueError(f"{name}: {value} is not an integer " + (f"from {low} to {high}" if high else f"at least {low}"))
    return int(value)


def _number(value: Any, name: str, low: float) -> float:
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value) or value < low:
        raise ValueError(f"{name}: {value} is not a finite number at least {low:g}")
    return float(value)


def _noise_sources(n: int, seed: Any, generator: Any, latents: Any) -> tuple[list[int | None], list]:
    """``(the seed of each image, what each image's noise is drawn from)`` for ``n`` images."""
    given = [name for name, value in (("generator", generator), ("latents", latents)) if value is not None]
    if len(given) > 1:
        raise ValueError("give one of seed, generator or latents")
    if latents is not None:
        if not isinstance(latents, torch.Tensor) or latents.shape[0] != n:
            raise ValueError(f"latents: expected a tensor of {n} initial latents, got "
                             f"{tuple(latents.shape) if isinstance(latents, torch.Tensor) else latents!r}")
        return [None] * n, [0] * n
    if generator is not None:
        generators = list(generator) if isinstance(generator, (list, tuple)) else [generator] * n
        if len(generators) != n or not all(isinstance(g, torch.Generator) for g in generators):
            raise ValueError(f"generator: expected a torch.Generator or a list of {n}, got {generator!r}")
        return [None] * n, generators
    if isinstance(seed, (list, tuple)):
        seeds = [_integer(s, f"seed[{i}]", 0, MAX_SEED) for i, s in enumerate(seed)]
        if len(seeds) != n:
            raise ValueError(f"seed: {len(seeds)} seeds for {n} images")
    else:
        first = _integer(seed, "seed", 0, MAX_SEED - n)
        seeds = [first + k for k in range(n)]
    return seeds, seeds


def _image_start(adapter, image: Any, strength: Any, latents: Any, prompts: int, per_prompt: int, height: int,
                 width: int) -> tuple[torch.Tensor | None, float]:
    """``(preprocessed pixels of each image's start image, strength)`` for image-to-image, ``(None, 1.0)`` without."""
    from PIL import Image

    if image is None:
        if strength is not None:
            raise ValueError("strength: only used with image= (image-to-image)")
        return None, 1.0
    if latents is not None:
        raise ValueError("give one of image or latents")
    strength = 0.6 if strength is None else _number(strength, "strength", 0.0)
    if not 0 < strength <= 1:
        raise ValueError(f"strength: {strength} is not in (0, 1]")
    images = [image] if isinstance(image, Image.Image) else image
    if not isinstance(images, (list, tuple)) or not images or not all(isinstance(i, Image.Image) for i in images):
        raise TypeError(f"image: expected a PIL image or a list of PIL images, got {image!r}")
    n = prompts * per_prompt
    if len(images) not in (1, prompts, n):
        raise ValueError(f"image: {len(images)} images for {prompts} prompts and {n} outputs (give 1, {prompts} or {n})")
    pixels = adapter.preprocess_image(list(images), height, width)
    index = [0 if len(images) == 1 else (k if len(images) == n else k // per_prompt) for k in range(n)]
    return pixels[index], strength


def _pairs(pairs: Any) -> list[PromptPair]:
    if isinstance(pairs, (str, tuple)) or not isinstance(pairs, Sequence) or not pairs:
        raise TypeError(f"pairs: expected a non-empty list of (prompt without the feature, prompt with it), "
                        f"got {pairs!r}")
    out = []
    for i, pair in enumerate(pairs):
        if isinstance(pair, PromptPair):
            out.append(pair)
            continue
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(p, str) and p.strip()
                                                                             for p in pair)):
            raise TypeError(f"pairs: entry {i} is not a pair of two prompts: {pair!r}")
        out.append(PromptPair(*pair))
    return out
