"""Guidance methods and their registry: name -> class. Adding a method is one module here and its entry."""

from __future__ import annotations

from .apg import APG
from .base import Method, Request, Step, cfg, check_window, in_window, perturbation_term, weighted_mean
from .cfgzero import CFGZeroStar
from .classifier_free import CFG, NoGuidance
from .concept import ConceptDiffusion
from .cslg import CSLG, SLG
from .pag import PAG
from .scfg import SCFG
from .slg_neg import SkippedNegativeSLG

REGISTRY: dict[str, type[Method]] = {
    cls.name: cls
    for cls in (NoGuidance, CFG, SLG, CSLG, SCFG, ConceptDiffusion, PAG, APG, CFGZeroStar, SkippedNegativeSLG)
}

__all__ = [
    "APG", "CFGZeroStar", "PAG", "SkippedNegativeSLG", "CFG", "CSLG", "ConceptDiffusion", "Method", "NoGuidance", "REGISTRY", "Request", "SCFG", "SLG", "Step", "cfg",
    "check_window", "in_window", "perturbation_term", "weighted_mean",
]
