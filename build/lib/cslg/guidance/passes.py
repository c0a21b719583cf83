"""What a method asks of one forward: named passes, each a conditioning, a latent and a perturbation per block.

``skip``: the block is an identity for every stream, in its own output order, and is not computed.
``identity_attention``: in that block, image queries attend only to themselves among the image keys (PAG).
Light: no torch (the methods and the command line import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

SKIP = "skip"
IDENTITY_ATTENTION = "identity_attention"
PERTURBATIONS = (SKIP, IDENTITY_ATTENTION)


@dataclass(frozen=True)
class Pass:
    """One prediction of a step: the conditioning ``condition`` (by name), the batch entry ``latent``, and the
    perturbation of each perturbed block as ``(layer, kind)`` pairs."""

    condition: str
    perturb: frozenset[tuple[str, str]] = frozenset()
    latent: int = 0

    @classmethod
    def of(cls, condition: str, *, skip: Sequence[str] = (), identity_attention: Sequence[str] = (),
           latent: int = 0) -> Pass:
        """A pass that skips the blocks ``skip`` and perturbs the attention of ``identity_attention``."""
        clash = set(skip) & set(identity_attention)
        if clash:
            raise ValueError(f"layers {sorted(clash)} are both skipped and perturbed in one pass")
        perturb = {(layer, SKIP) for layer in skip} | {(layer, IDENTITY_ATTENTION) for layer in identity_attention}
        return cls(condition, frozenset(perturb), latent)

    def at(self, layer: str) -> str | None:
        """The perturbation of block ``layer`` in this pass (``None``: computed as is)."""
        return next((kind for name, kind in self.perturb if name == layer), None)

    def layers(self, kind: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, k in self.perturb if k == kind))
