"""Loading pipelines: diffusers ids, local ``save_pretrained`` folders, or the built-in tiny presets."""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import DiffusionPipeline

from .families import adapter_class, build_tiny
from .options import OFFLOAD_MODES, TINY_PRESETS


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_pipeline(
    model: str,
    family: str | None = None,
    device: str | torch.device | None = None,
    dtype: torch.dtype | None = None,
    offload: str = "none",
) -> DiffusionPipeline:
    """Load ``model`` and put it on ``device`` (bf16 on GPU, fp32 on CPU unless ``dtype`` is given).

    Args:
        model: a tiny preset (``cslg.options.TINY_PRESETS``), a diffusers model id, or a local
            folder in ``save_pretrained`` layout.
        family: a family name (``"flux"``, ``"sd3"``, ...): fail early when the model is of another family.
        offload: ``"none"``, ``"model"`` (``enable_model_cpu_offload``) or ``"sequential"``
            (``enable_sequential_cpu_offload``); both need a GPU.
    """
    if offload not in OFFLOAD_MODES:
        raise ValueError(f"--offload must be one of {', '.join(OFFLOAD_MODES)}, got {offload!r}")
    try:
        device = torch.device(device) if device is not None else default_device()
    except RuntimeError as e:
        raise ValueError(f"--device {device}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here (use --device cpu)")
    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    if model in TINY_PRESETS:
        pipe = build_tiny(model)
        if dtype != torch.float32:
            pipe.to(dtype=dtype)
    elif model.startswith("tiny-"):
        raise ValueError(f"--model {model!r}: unknown tiny preset; choose one of {', '.join(TINY_PRESETS)}")
    else:
        folder = Path(model).expanduser()
        if folder.exists() and not (folder / "model_index.json").exists():
            raise FileNotFoundError(f"--model {model}: folder has no model_index.json (not a diffusers save_pretrained folder)")
        pipe = _from_pretrained(model, folder, dtype)
    adapter = adapter_class(pipe)  # fails for unsupported pipelines
    if family is not None and adapter.name != family:
        raise ValueError(f"--model {model} is a {type(pipe).__name__} ({adapter.name}), but this script runs {family} models")
    for component in pipe.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    if offload == "model":
        pipe.enable_model_cpu_offload(device=device)
    elif offload == "sequential":
        pipe.enable_sequential_cpu_offload(device=device)
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _from_pretrained(model: str, folder: Path, dtype: torch.dtype) -> DiffusionPipeline:
    """``DiffusionPipeline.from_pretrained`` with one clear line for a model that cannot be had."""
    from huggingface_hub.errors import GatedRepoError, LocalEntryNotFoundError, RepositoryNotFoundError

    hint = f"use a local save_pretrained folder or a tiny preset ({', '.join(TINY_PRESETS)})"
    try:
        return DiffusionPipeline.from_pretrained(str(folder) if folder.exists() else model, torch_dtype=dtype)
    except GatedRepoError:
        raise ValueError(f"--model {model} is gated: accept its licence on huggingface.co and log in "
                         f"(`hf auth login`), or {hint}") from None
    except RepositoryNotFoundError:
        raise ValueError(f"--model {model}: no such model on the Hugging Face Hub (a typo?); {hint}") from None
    except (LocalEntryNotFoundError, OSError) as e:
        message = str(e)
        if isinstance(e, LocalEntryNotFoundError) or any(w in message for w in ("cached", "offline", "connect")):
            raise ValueError(f"--model {model} is not in the local cache and the Hub cannot be reached (offline?); "
                             f"{hint}") from None
        raise ValueError(f"--model {model} cannot be loaded ({message.splitlines()[0][:200]}); {hint}") from None
