"""The public Python API: guidance on a pipeline you loaded with diffusers, and the contrastive layer finder."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Sequence

from diffusers import DiffusionPipeline

from .analysis import analyse
from .capture import CaptureConfig, load_capture, run_capture
from .families import adapter_for
from .guidance.sampling import StepCallback, sample
from .methods.base import Method, Request
from .prompts import PromptPair


def layer_names(pipe: DiffusionPipeline) -> list[str]:
    """Every block name of ``pipe``'s transformer in execution order (``"5"``, and ``"s12"`` for FLUX's
    single-stream blocks)."""
    return list(adapter_for(pipe).layer_names)


def generate(
    pipe: DiffusionPipeline,
    prompt: str,
    method: Method,
    *,
    seed: int = 0,
    steps: int = 28,
    height: int | None = None,
    width: int | None = None,
    negative_prompt: str = "",
    concepts: Sequence[str] = (),
    max_sequence_length: int | None = None,
    guidance: float | None = None,
    attention_kwargs: dict[str, Any] | None = None,
    output_type: str = "pil",
    progress: bool = True,
    callback: StepCallback | None = None,
):
    """One image of ``prompt`` guided by ``method``, from the noise diffusers draws for ``seed``.

    ``pipe``: any supported diffusers pipeline (FLUX.1, SD3/3.5, ...), as loaded (CPU offload works).
    ``height``/``width``/``max_sequence_length`` default to the pipeline's defaults; ``guidance`` is the
    distilled guidance embedding where the model has one (FLUX.1-dev: 3.5). ``attention_kwargs`` go to the
    attention processors (e.g. ``{"scale": 0.8}`` for LoRA). ``callback(step, timestep, latents)`` runs after
    every step (as diffusers' ``callback_on_step_end``) and may return latents to continue from. An invalid layer
    raises ``cslg.LayerError``.
    """
    adapter = adapter_for(pipe, guidance)
    default = adapter.default_size()
    return sample(
        adapter, method, Request(prompt, negative_prompt, tuple(concepts)), seed, steps, height or default,
        width or default, max_sequence_length or adapter.default_max_sequence_length, output_type,
        attention_kwargs, progress, callback,
    )


def find_layers(
    pipe: DiffusionPipeline,
    pairs: Sequence[tuple[str, str] | PromptPair],
    *,
    steps: int = 28,
    seed: int = 0,
    height: int | None = None,
    width: int | None = None,
    guidance: float | None = None,
    max_sequence_length: int | None = None,
    trajectory: str = "independent",
    metric: str = "difference",
    baseline: str = "input",
    step: int | None = None,
    top_k: int = 3,
    out: str | Path | None = None,
) -> dict:
    """Which blocks carry the feature that tells the two prompts of each pair apart? Captures every pair (the
    prompt without the feature first) and ranks the blocks: the content of ``layers.json``, ``suggested`` the
    ``top_k`` best. ``out``: a folder to keep the capture, ``layers.json`` and the figures in."""
    adapter = adapter_for(pipe, guidance)
    pairs = [p if isinstance(p, PromptPair) else PromptPair(*p) for p in pairs]
    size = adapter.default_size()
    config = CaptureConfig(
        model=getattr(pipe, "name_or_path", None) or type(pipe).__name__, prompts_file="<find_layers>",
        pairs=len(pairs), steps=steps, seed=seed, height=height or size, width=width or size,
        guidance=adapter.guidance if guidance is None and adapter.has_distilled_guidance else (guidance or 1.0),
        max_sequence_length=max_sequence_length or adapter.default_max_sequence_length, trajectory=trajectory,
    )
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(out) if out is not None else Path(tmp)
        capture = run_capture(adapter, pairs, config, folder / "capture.safetensors", progress=True)
        result = analyse([load_capture(capture)], folder, metric, step, top_k, baseline=baseline)
    if out is None:  # the temporary folder is gone: no paths into it
        result = {k: v for k, v in result.items() if k not in ("path", "figures", "captures")}
    return result
