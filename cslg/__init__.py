"""Contrastive Skip-Layer Guidance (CSLG) toolkit for FLUX.1 and Stable Diffusion 3 / 3.5."""

__version__ = "0.1.0"
