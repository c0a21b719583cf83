"""What a method asks of one forward: named passes, each a conditioning, a latent and a perturbation per block.

``skip``: the block is an identity for every stream, in its own output order, and is not computed.
``identity_attention``: in that block, image queries attend only to themselves among the image keys (PAG).
``PatchFrom(source)``: the block's image-token output is the one pass ``source`` computes at the same block (activation
patching); its text tokens stay the pass's own (taking both streams would make the pass equal to ``source`` from there
on, but for the pooled conditioning).
Light: no torch (the methods and the command line import it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence, Union

SKIP = "skip"
IDENTITY_ATTENTION = "identity_attention"
PERTURBATIONS = (SKIP, IDENTITY_ATTENTION)


@dataclass(frozen=True)
class PatchFrom:
    """Perturbation of a block: its image-token output is taken from the pass named ``source`` (same block, same
    step, same forward)."""

    source: str


Perturbation = Union[str, PatchFrom]


@dataclass(frozen=True)
class Pass:
    """One prediction of a step: the conditioning ``condition`` (by name), the batch entry ``latent``, and the
    perturbation of each perturbed block as ``(layer, kind)`` pairs."""

    condition: str
    perturb: frozenset[tuple[str, Perturbation]] = frozenset()
    latent: int = 0

    @classmethod
    def of(cls, condition: str, *, skip: Sequence[str] = (), identity_attention: Sequence[str] = (),
           patch_from: Mapping[str, str] | None = None, latent: int = 0) -> Pass:
        """A pass that skips the blocks ``skip``, perturbs the attention of ``identity_attention`` and takes the
        image-token output of each block of ``patch_from`` (layer -> pass name) from that pass."""
        patch_from = dict(patch_from or {})
        sets = [set(skip), set(identity_attention), set(patch_from)]
        clash = (sets[0] & sets[1]) | (sets[0] & sets[2]) | (sets[1] & sets[2])
        if clash:
            raise ValueError(f"layers {sorted(clash)} are perturbed twice in one pass")
        perturb = {(layer, SKIP) for layer in skip} | {(layer, IDENTITY_ATTENTION) for layer in identity_attention}
        perturb |= {(layer, PatchFrom(source)) for layer, source in patch_from.items()}
        return cls(condition, frozenset(perturb), latent)

    def at(self, layer: str) -> Perturbation | None:
        """The perturbation of block ``layer`` in this pass (``None``: computed as is)."""
        return next((kind for name, kind in self.perturb if name == layer), None)

    def layers(self, kind: str) -> tuple[str, ...]:
        return tuple(sorted(name for name, k in self.perturb if k == kind))

    def patch_sources(self) -> set[str]:
        """The passes this pass takes block outputs from."""
        return {k.source for _, k in self.perturb if isinstance(k, PatchFrom)}
