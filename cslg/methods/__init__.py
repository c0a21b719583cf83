"""Guidance methods and their registry: name -> class. Adding a method is one module here and its entry."""

from __future__ import annotations

from .base import Method, Request, Step, cfg, check_window, in_window, perturbation_term, weighted_mean
from .classifier_free import CFG, NoGuidance
from .concept import ConceptDiffusion
from .cslg import CSLG, SLG
from .scfg import SCFG

REGISTRY: dict[str, type[Method]] = {cls.name: cls for cls in (NoGuidance, CFG, SLG, CSLG, SCFG, ConceptDiffusion)}

__all__ = [
    "CFG", "CSLG", "ConceptDiffusion", "Method", "NoGuidance", "REGISTRY", "Request", "SCFG", "SLG", "Step", "cfg",
    "check_window", "in_window", "perturbation_term", "weighted_mean",
]
