"""Capture files (step 1 -> 2): safetensors with JSON-encoded metadata, never pickle.

Metadata ``finder``: ``contrast`` (also files written before finders existed), ``ablation`` or ``patching``.

``contrast``: ``cosine`` [pairs, steps, layers] (float32), ``input_cosine`` [pairs, steps] (the image tokens entering
the first block) and, when raw activations were saved,
``activations.<layer>`` [pairs, saved_steps, 2, image_tokens, dim] with ``activation_steps`` [saved_steps].

``ablation`` / ``patching``: ``cosine`` = ``cos(n, p_l)`` and ``distance`` = ``‖n - p_l‖₂`` [pairs, steps, layers],
``reference_cosine`` = ``cos(n, p)`` and ``reference_distance`` = ``‖n - p‖₂`` [pairs, steps].
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_write

FORMAT = "cslg-capture-1"


@dataclass
class Capture:
    """A loaded capture file: named tensors plus decoded metadata."""

    path: Path
    cosine: torch.Tensor
    metadata: dict
    activations: dict[str, torch.Tensor] = field(default_factory=dict)
    activation_steps: torch.Tensor | None = None
    input_cosine: torch.Tensor | None = None  # [pairs, steps]: the image tokens entering the first block
    distance: torch.Tensor | None = None  # causal finders: [pairs, steps, layers]
    reference_distance: torch.Tensor | None = None  # causal finders: [pairs, steps]
    reference_cosine: torch.Tensor | None = None  # causal finders: [pairs, steps]

    @property
    def finder(self) -> str:
        return self.metadata.get("finder", "contrast")

    @property
    def layer_names(self) -> list[str]:
        return self.metadata["layer_names"]

    @property
    def model(self) -> str:
        return self.metadata["model"]


def save_capture(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> Path:
    """Write tensors and metadata (each value JSON-encoded) atomically."""
    meta = {key: json.dumps(value) for key, value in {"format": FORMAT, **metadata}.items()}
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def read_metadata(path: str | os.PathLike) -> dict:
    """Decoded metadata of a capture file (reads no tensor data)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"capture file not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise ValueError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        meta = {key: json.loads(value) for key, value in raw.items()}
    except ValueError as e:
        raise ValueError(f"{path}: its metadata is not JSON ({e}); not a capture file written by cslg") from None
    if "rows" in meta and "compare" not in meta:  # written before the setting was renamed
        meta["compare"] = meta.pop("rows")
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a CSLG capture file (metadata 'format' is {meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def load_capture(path: str | os.PathLike) -> Capture:
    """Load a capture file written by the LayerExperiment scripts."""
    meta = read_metadata(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except Exception as e:  # safetensors raises its own error types for truncated data
        raise ValueError(f"{path}: the tensors cannot be read ({e}); the file is truncated or corrupt") from None
    if "cosine" not in tensors:
        raise ValueError(f"{path}: capture file has no 'cosine' tensor")
    cosine, names = tensors["cosine"], meta.get("layer_names")
    if cosine.ndim != 3:
        raise ValueError(f"{path}: 'cosine' has shape {tuple(cosine.shape)}, expected [pairs, steps, layers]")
    if not (isinstance(names, list) and len(names) == cosine.shape[-1] and all(isinstance(n, str) for n in names)):
        raise ValueError(f"{path}: metadata 'layer_names' must list the {cosine.shape[-1]} layers of 'cosine'")
    if not torch.isfinite(cosine).all():
        raise ValueError(f"{path}: 'cosine' holds NaN or infinite values (a capture with non-finite settings?)")
    check_metadata(path, meta, cosine, tensors.get("input_cosine"))
    if meta.get("finder", "contrast") != "contrast":
        for key, shape in (("distance", cosine.shape), ("reference_distance", cosine.shape[:2]),
                           ("reference_cosine", cosine.shape[:2])):
            if key not in tensors or tuple(tensors[key].shape) != tuple(shape):
                raise ValueError(f"{path}: this {meta['finder']} capture needs a {key!r} tensor of shape {tuple(shape)}")
            if not torch.isfinite(tensors[key]).all():
                raise ValueError(f"{path}: {key!r} holds NaN or infinite values")
    prefix = "activations."
    return Capture(
        path=Path(path),
        cosine=tensors["cosine"],
        metadata=meta,
        activations={k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)},
        activation_steps=tensors.get("activation_steps"),
        input_cosine=tensors.get("input_cosine"),
        distance=tensors.get("distance"),
        reference_distance=tensors.get("reference_distance"),
        reference_cosine=tensors.get("reference_cosine"),
    )


def check_metadata(path: str | os.PathLike, meta: dict, cosine: torch.Tensor, input_cosine: torch.Tensor | None) -> None:
    """The metadata must describe the tensors (a hand-edited file fails here, naming the key)."""
    from ..families import family_names

    pairs, steps, _ = cosine.shape
    names = meta["layer_names"]
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: metadata 'layer_names' lists a layer twice")
    for key, n in (("steps", steps), ("pairs", pairs)):
        if key in meta and meta[key] != n:
            raise ValueError(f"{path}: metadata {key!r} is {meta[key]!r} but 'cosine' holds {n}")
    if "family" in meta and meta["family"] not in family_names():
        raise ValueError(f"{path}: metadata 'family' {meta['family']!r} is not one of {', '.join(family_names())}")
    if input_cosine is not None and (tuple(input_cosine.shape) != (pairs, steps) or not torch.isfinite(input_cosine).all()):
        raise ValueError(f"{path}: 'input_cosine' must be finite with shape [{pairs}, {steps}] "
                         f"(has {tuple(input_cosine.shape)})")
