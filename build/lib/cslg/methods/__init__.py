"""Guidance methods and their registry: name -> class. Adding a method is one module here (its options declared
with ``cslg.methods.schema.option``), its entry in ``REGISTRY``, and its tests; its flags, grid cells, validation
and manifest params follow from the declaration."""

from __future__ import annotations

from .apg import APG
from .base import Method, Request, Step, cfg, in_window, layer_combinations, perturbation_term, weighted_mean
from .cfgzero import CFGZeroStar
from .classifier_free import CFG, NoGuidance
from .concept import ConceptDiffusion
from .cslg import CSLG, SLG
from .pag import PAG
from .scfg import SCFG
from .schema import Declared, Option, declared, option
from .slg_neg import SkippedNegativeSLG

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (NoGuidance, CFG, SLG, CSLG, SCFG, ConceptDiffusion, PAG, APG, CFGZeroStar, SkippedNegativeSLG)
}

__all__ = [
    "APG", "CFG", "CFGZeroStar", "CSLG", "ConceptDiffusion", "Declared", "Method", "NoGuidance", "Option", "PAG",
    "REGISTRY", "Request", "SCFG", "SLG", "SkippedNegativeSLG", "Step", "cfg", "declared", "in_window",
    "layer_combinations", "option", "perturbation_term", "weighted_mean",
]
