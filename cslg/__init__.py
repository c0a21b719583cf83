"""Training-free guidance of diffusion transformers: Contrastive Skip-Layer Guidance (CSLG), its contrastive
layer finder, and the methods of the field (SLG, S-CFG, ConceptDiffusion, PAG, APG, CFG-Zero*, skipped-negative
SLG) on every supported diffusers family.

    import cslg
    image = cslg.generate(pipe, "a sign that says 'OPEN'", cslg.CSLG(layers=[5], scale=1.0), seed=0)

Names load on first use, so the command line answers ``--help`` without importing torch and diffusers. The layout
(``docs/architecture.md``): ``families`` (adapters, tiny presets), ``guidance`` (executor, attention, sampling,
skip), ``methods``, then the four steps ``capture``, ``analysis``, ``grid``, ``evaluation``, and ``cli``.
"""

from importlib import import_module

from . import _moved

__version__ = "0.3.0"

_WHERE = {
    **dict.fromkeys(("GenerationOutput", "find_layers", "generate", "layer_names"), ".api"),
    **dict.fromkeys(("ADAPTERS", "Adapter", "LayerError", "adapter_for", "family_of"), ".families"),
    **dict.fromkeys(("APG", "CFG", "CSLG", "PAG", "REGISTRY", "SCFG", "SLG", "CFGZeroStar", "ConceptDiffusion",
                     "Method", "NoGuidance", "Request", "SkippedNegativeSLG", "Step"), ".methods"),
    **dict.fromkeys(("DegenerateMethodWarning", "compile_blocks"), ".guidance.sampling"),
    "skip_blocks": ".guidance.skip",
    "diffusers_guider": ".guidance.guiders",
    "load_capture": ".capture",
    "load_pipeline": ".models",
}

__all__ = sorted(_WHERE)
_moved.install(__name__)


def __getattr__(name: str):
    if name in _WHERE:
        value = getattr(import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'cslg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_WHERE])
