"""The cells of a grid, derived from the methods' option declarations: every axis option (``Option.axis``) takes
each of its values, the other options one value each."""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Mapping, Sequence

from ..guidance.sampling import DegenerateMethodWarning
from ..methods.base import Method, layer_combinations
from ..methods.schema import declared


def method_cells(cls: type[Method], values: Mapping[str, Any], layer_mode: str = "given") -> list[Method]:
    """Every instance of ``cls`` in a grid. ``values``: option name -> value, or for an axis the list of its values
    (a layer axis: its layer names, made into sets by ``layer_mode``, ``given`` or ``all``); options missing from
    ``values`` keep their defaults. The cells are the product of the axes, in declaration order."""
    fixed, axes = {}, {}
    for d in declared(cls):
        if d.name not in values:
            continue
        value = values[d.name]
        if d.spec.axis and d.kind == "layers" and value is not None:
            axes[d.name] = layer_combinations(list(value), layer_mode)
        elif d.spec.axis and isinstance(value, (list, tuple)):
            axes[d.name] = list(value)
        else:
            fixed[d.name] = value
    return [cls(**fixed, **dict(zip(axes, combo))) for combo in itertools.product(*axes.values())]


def unique_cells(cells: Sequence[Method]) -> list[Method]:
    """``cells`` without repeats (frozen dataclasses: equal objects are equal settings), with a warning if any."""
    unique = list(dict.fromkeys(cells))
    if len(unique) < len(cells):
        warnings.warn(f"{len(cells) - len(unique)} grid cell(s) repeat the settings of another cell: generated once",
                      DegenerateMethodWarning, stacklevel=2)
    return unique
