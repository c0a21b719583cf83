"""File-name tags and contact-sheet labels of a method's settings."""

from __future__ import annotations

import hashlib
import json

from ..methods.base import Method

# (option, short name) shown in tags and labels when a method has it
READABLE = (("cfg_scale", "w"), ("scale", "s"), ("concept_scale", "g"))


def method_tag(method: Method) -> str:
    """Short, file-name-safe, readable and unique tag of a method and its settings."""
    params = method.params()
    readable = [method.name]
    if isinstance(params.get("layers"), list):
        readable.append("L" + "-".join(params["layers"]))
    readable += [f"{short}{params[key]:g}" for key, short in READABLE if params.get(key) is not None]
    if params:  # the digest keeps tags unique when settings beyond the readable ones differ
        readable.append(hashlib.sha1(json.dumps(params, sort_keys=True).encode()).hexdigest()[:6])
    return "_".join(readable)


def method_label(method: Method) -> str:
    """Label of a method in contact sheets: its name and variant, layers (and their weights) and scales."""
    params = method.params()
    parts = [method.name] + ([method.variant] if method.variant else [])
    if isinstance(params.get("layers"), list):
        parts.append("[" + ",".join(params["layers"]) + "]")
    if isinstance(params.get("weights"), list) and len(set(params["weights"])) > 1:  # equal weights: the variant says
        parts.append("a=" + "/".join(f"{a:.2g}" for a in params["weights"]))
    parts += [f"{short}={params[key]:g}" for key, short in READABLE if params.get(key) is not None]
    return " ".join(parts)
