"""Training-free guidance of diffusion transformers: Contrastive Skip-Layer Guidance (CSLG), its contrastive
layer finder, and the baselines (SLG, S-CFG, ConceptDiffusion) on every supported diffusers family.

    import cslg
    image = cslg.generate(pipe, "a sign that says 'OPEN'", cslg.CSLG(layers=[5], scale=1.0), seed=0)
"""

from .api import find_layers, generate, layer_names
from .families import ADAPTERS, Adapter, LayerError, adapter_for, family_of
from .methods import (
    APG, CFG, CSLG, PAG, REGISTRY, SCFG, SLG, CFGZeroStar, ConceptDiffusion, Method, NoGuidance, Request,
    SkippedNegativeSLG, Step,
)
from .skip import skip_blocks

__version__ = "0.2.0"

__all__ = [
    "APG", "CFGZeroStar", "PAG", "SkippedNegativeSLG", "ADAPTERS", "Adapter", "CFG", "CSLG", "ConceptDiffusion", "LayerError", "Method", "NoGuidance", "REGISTRY",
    "Request", "SCFG", "SLG", "Step", "adapter_for", "family_of", "find_layers", "generate", "layer_names",
    "skip_blocks",
]
