"""Layer names: the one canonical form every part of the toolkit uses. ``"5"`` is ``transformer_blocks[5]`` (FLUX
double-stream block 5, SD3 joint block 5); a later block list has a prefix (FLUX's ``single_transformer_blocks[12]``
is ``"s12"``). A model's adapter checks names against its blocks (``Adapter.resolve_layers``). Light: no torch."""

from __future__ import annotations

from numbers import Integral
from typing import Iterable


def canonical_layers(layers: str | int | Iterable[str | int], what: str = "layers") -> tuple[str, ...]:
    """``5`` -> ``("5",)``; ``"3,8 S12"`` -> ``("3", "8", "s12")``; ``["3", 8]`` -> ``("3", "8")``.

    Strings are split at commas and white space and lower-cased; integers are block indices of the first list.
    Anything else raises ``TypeError`` naming ``what``; order and repeats are kept (callers reject repeats).
    """
    items = [layers] if isinstance(layers, (str, Integral)) else layers
    try:
        items = list(items)
    except TypeError:
        raise TypeError(f"{what}: expected layer names like 5, '5' or 's12', got {layers!r}") from None
    out: list[str] = []
    for item in items:
        if isinstance(item, bool) or not isinstance(item, (str, Integral)):
            raise TypeError(f"{what}: expected layer names like 5, '5' or 's12', got {item!r}")
        if isinstance(item, Integral):
            if item < 0:
                raise ValueError(f"{what}: block index {item} is negative")
            out.append(str(int(item)))
        else:
            out.extend(token.lower() for token in item.replace(",", " ").split())
    return tuple(out)


def repeated(layers: Iterable[str]) -> str | None:
    """The first name that occurs twice in ``layers``, or ``None``."""
    seen: set[str] = set()
    for layer in layers:
        if layer in seen:
            return layer
        seen.add(layer)
    return None
