"""Every guidance method declares its settings once, as dataclass fields made with ``option(...)``: the type (the
field's annotation), the default, the valid range or choices, a help text, whether it is a grid axis, its
command-line flag, and where a ``None`` default is taken from the model's family. Everything else derives from
these declarations: the constructor's validation (a bad value raises naming the argument), the flags and
``--help`` of ``cslg grid`` and the final-experiment scripts, the grid's cells, the manifest's ``params`` and
``to_dict`` / ``from_dict``.

    @dataclass(frozen=True)
    class PAG(Method):
        scale: float = option(3.0, "perturbed-attention guidance scale s", low=0, axis=True)

The kinds an annotation can give: ``float``, ``int``, ``bool``, ``str`` (with ``choices``), ``tuple[str, ...]``
(layer names) and ``tuple[float, ...]`` (numbers), each optionally ``| None``.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import MISSING, dataclass
from functools import cache
from numbers import Integral, Real
from typing import Any, Sequence

from ..layers import canonical_layers, repeated

KINDS = ("float", "int", "bool", "str", "layers", "floats")


@dataclass(frozen=True)
class Option:
    """What an option declares besides its type and default (see the module docstring).

    ``low``/``high``: inclusive bounds of a number (of every entry of a list). ``axis``: in a grid the flag takes
    several values, one cell each. ``flag``: the command-line flag (default ``--<method>-<name>``, plural for an
    axis: ``--cslg-scales``). ``family_default``: the adapter attribute (or method) whose value replaces ``None`` when
    the method is bound to a model (``Method.bind``). ``fallback``: the flag whose value applies in a grid when
    this option's own flag is not given.
    """

    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] | None = None
    axis: bool = False
    flag: str | None = None
    family_default: str | None = None
    fallback: str | None = None


def option(default: Any = MISSING, help: str = "", **spec: Any) -> Any:
    """A dataclass field declaring an option (``spec``: the fields of ``Option`` besides ``help``)."""
    return dataclasses.field(default=default, metadata={"option": Option(help, **spec)})


@dataclass(frozen=True)
class Declared:
    """An option of a method class: its name, kind, whether ``None`` is allowed, its default and its ``Option``."""

    name: str
    kind: str
    optional: bool
    default: Any
    spec: Option

    def flag(self, method: str) -> str:
        if self.spec.flag:
            return self.spec.flag
        plural = ("es" if self.name.endswith("s") else "s") if self.spec.axis else ""
        return f"--{method}-{self.name.replace('_', '-')}{plural}"

    @property
    def required(self) -> bool:
        return self.default is MISSING

    def describe(self) -> str:
        """The valid values in words, e.g. ``a finite number between 0 and 1`` (for help texts and errors)."""
        if self.kind == "bool":
            return "true or false"
        if self.kind == "str":
            return "one of " + ", ".join(self.spec.choices or ())
        if self.kind == "layers":
            return "layer names like 5 or s12"
        what = {"float": "a finite number", "int": "an integer", "floats": "finite numbers"}[self.kind]
        low, high = self.spec.low, self.spec.high
        if low is not None and high is not None:
            return f"{what} between {low:g} and {high:g}"
        if low is not None:
            return f"{what} at least {low:g}"
        if high is not None:
            return f"{what} at most {high:g}"
        return what


@cache
def declared(cls: type) -> tuple[Declared, ...]:
    """The declared options of a method class, in field order."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        spec = f.metadata.get("option")
        if spec is None:
            continue
        kind, optional = _kind(hints[f.name], f"{cls.__name__}.{f.name}")
        out.append(Declared(f.name, kind, optional, f.default, spec))
    return tuple(out)


def _kind(hint: Any, where: str) -> tuple[str, bool]:
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        (hint,) = [a for a in args if a is not type(None)]
    if typing.get_origin(hint) is tuple:
        element = typing.get_args(hint)[0]
        if element is str:
            return "layers", optional
        if element is float:
            return "floats", optional
    elif hint in (float, int, bool, str):
        return hint.__name__, optional
    raise TypeError(f"{where}: an option must be one of {', '.join(KINDS)} (optionally | None), not {hint}")


def check_value(where: str, d: Declared, value: Any) -> Any:
    """``value`` for option ``d`` in its canonical form (numbers as floats, layer names as a tuple of canonical
    names), or ``TypeError`` / ``ValueError`` naming ``where`` (an argument like ``cslg: scale`` or a flag)."""
    if value is None:
        if d.optional:
            return None
        raise TypeError(f"{where}: None is not {d.describe()}")
    if d.kind in ("float", "int"):
        return _number(where, d, value)
    if d.kind == "bool":
        if not isinstance(value, bool):
            raise TypeError(f"{where}: {value!r} is not True or False")
        return value
    if d.kind == "str":
        if not isinstance(value, str):
            raise TypeError(f"{where}: {value!r} is not a string")
        if d.spec.choices and value not in d.spec.choices:
            raise ValueError(f"{where}: {value!r} is not {d.describe()}")
        return value
    if d.kind == "layers":
        names = canonical_layers(value, where)
        if not names:
            raise ValueError(f"{where}: no layers given")
        if twice := repeated(names):
            raise ValueError(f"{where}: layer {twice!r} is given twice")
        return names
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{where}: {value!r} is not a list of {d.describe()}")
    return tuple(_number(f"{where}[{i}]", d, v) for i, v in enumerate(value))


def _number(where: str, d: Declared, value: Any) -> float | int:
    integer = d.kind == "int"
    if isinstance(value, bool) or not isinstance(value, Integral if integer else Real):
        raise TypeError(f"{where}: {value!r} is not {d.describe()}")
    value = int(value) if integer else float(value)
    if not math.isfinite(value) or (d.spec.low is not None and value < d.spec.low) or (
            d.spec.high is not None and value > d.spec.high):
        raise ValueError(f"{where}: {value} is not {d.describe()}")
    return value


def jsonable(value: Any) -> Any:
    """An option value as JSON stores it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value
