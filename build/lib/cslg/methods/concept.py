"""ConceptDiffusion (Kang et al., arXiv 2312.15964, "Semantic Guidance Tuning for Text-To-Image Diffusion
Models"), as in the first version of the reference code, on flow-matching velocities.

Per step the passes ``[∅, prompt p, concepts c_1..c_n]`` run in one batched forward (n + 2 lanes) and

    s_p = v(p) - v(∅),  s_j = v(c_j) - v(∅),  S = Σ_j s_j,  s_a = s_p - (<s_p, S>/‖S‖²) S   (abstract concept)
    ρ_j = |cos(s_p, s_j)|,  ρ_a = |cos(s_p, s_a)|
    g_j = s_j - (<s_j, s_p>/‖s_p‖²) s_p: added if ρ_j < τ_s, subtracted if ρ_j > u
    g_a = s_a with entries below the per-channel quantile of |s_a| at level ρ_a zeroed: added if ρ_a < τ_a
    ṽ = v(∅) + w s_p + w_g Σ(active terms)

inside the step window, plain CFG outside (where only the two CFG passes run). ∅ is the request's
negative prompt (empty by default); on FLUX-dev every pass, the negative one included, gets the same
distilled guidance embedding. Inner products run over the whole flattened latent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..families.layout import LatentLayout
from ..guidance.passes import Pass
from ..text import normalize_text, quoted_spans
from .base import Method, cfg, cfg_scale_option, start_option, stop_option
from .schema import option

SPACY_MODEL = "en_core_web_sm"
SPLITTERS = ("simple", "spacy")
_SEPARATOR = re.compile(r"\s*(?:[,;]|\band\b)\s*", re.IGNORECASE)


# Pure formulas -----------------------------------------------------------------------------------------
def _dot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x.float() * y.float()).sum()


def project_out(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The part of ``x`` perpendicular to ``y``: ``x - (<x, y>/‖y‖²) y`` (``x`` itself when ``y = 0``)."""
    norm2 = _dot(y, y)
    if norm2 == 0:
        return x.float()
    return x.float() - (_dot(x, y) / norm2) * y.float()


def abstract_concept(s_p: torch.Tensor, subjects: torch.Tensor) -> torch.Tensor:
    """Abstract concept ``s_a = s_p - (<s_p, S>/‖S‖²) S`` with ``S = Σ_j s_j`` (``subjects`` ``[n, ...]``)."""
    return project_out(s_p, subjects.sum(dim=0, keepdim=True))


def cosine(x: torch.Tensor, y: torch.Tensor) -> float:
    """``|cos(x, y)|`` over the flattened tensors (0 when either is 0)."""
    denom = torch.sqrt(_dot(x, x) * _dot(y, y))
    return float((_dot(x, y).abs() / denom) if denom > 0 else 0.0)


def sparsify(x: torch.Tensor, level: float, layout: LatentLayout) -> torch.Tensor:
    """Keep the entries of ``x`` with ``|x|`` at or above the quantile at ``level`` of ``|x|`` in their latent
    channel; zero the rest."""
    q = torch.quantile(layout.channel_view(x.abs().float()), level, dim=1)  # [C]
    return torch.where(x.abs() >= layout.per_channel(q), x, torch.zeros_like(x))


def concept_terms(
    s_p: torch.Tensor,
    subjects: torch.Tensor,
    subject_threshold: float,
    abstract_threshold: float,
    upper_bound: float,
    layout: LatentLayout,
) -> torch.Tensor:
    """``Σ(active terms)`` (float32, shaped like ``s_p`` ``[1, ...]``) for subject scores ``subjects`` ``[n, ...]``.

    ``g_j = s_j ⊥ s_p`` is added if ``ρ_j < τ_s`` and subtracted if ``ρ_j > u``; the sparsified abstract
    concept is added if ``ρ_a < τ_a``; ``ρ = |cos(s_p, ·)|``.
    """
    total = torch.zeros_like(s_p, dtype=torch.float32)
    for s_j in subjects:
        rho = cosine(s_p, s_j)
        if rho < subject_threshold:
            total = total + project_out(s_j[None], s_p)
        if rho > upper_bound:
            total = total - project_out(s_j[None], s_p)
    s_a = abstract_concept(s_p, subjects)
    rho_a = cosine(s_p, s_a)
    if rho_a < abstract_threshold:
        total = total + sparsify(s_a, rho_a, layout)
    return total


# Concepts from a prompt ---------------------------------------------------------------------------------
def split_concepts(prompt: str, splitter: str = "simple") -> list[str]:
    """The concepts of ``prompt``.

    ``simple``: split at commas, semicolons and the word "and" outside quotes
    ("a red book and a gold clock" -> ["a red book", "a gold clock"]; one concept when nothing splits).
    ``spacy``: spaCy's noun chunks (as the paper did for datasets); needs spaCy and ``en_core_web_sm``.
    """
    if splitter == "spacy":
        return _noun_chunks(prompt)
    if splitter != "simple":
        raise ValueError(f"concept splitter must be one of {SPLITTERS}, got {splitter!r}")
    text = normalize_text(prompt)
    quoted = quoted_spans(text)
    pieces, start = [], 0
    for sep in _SEPARATOR.finditer(text):
        if not any(a <= sep.start() < b for a, b in quoted):
            pieces.append(text[start : sep.start()])
            start = sep.end()
    pieces.append(text[start:])
    return [p.strip() for p in pieces if p.strip()]


def _noun_chunks(prompt: str) -> list[str]:
    try:
        import spacy

        nlp = spacy.load(SPACY_MODEL)
    except (ImportError, OSError) as e:
        raise RuntimeError(f"the spacy concept splitter needs spaCy and its {SPACY_MODEL} model: {e}") from e
    return [chunk.text for chunk in nlp(prompt).noun_chunks]


# The method ---------------------------------------------------------------------------------------------
def concept_prediction(u: torch.Tensor, c: torch.Tensor, concepts: torch.Tensor, w: float, w_g: float,
                       subject_threshold: float | None, abstract_threshold: float | None, upper_bound: float,
                       layout: LatentLayout) -> torch.Tensor:
    """``ṽ = u + w s_p + w_g Σ(active terms)`` with ``s_p = c - u`` and subject scores ``concepts - u``
    (``concepts`` ``[n, ...]``); ``None`` thresholds are ``1/(n+1)``."""
    v = cfg(u, c, w)
    n = concepts.shape[0]
    if n == 0:
        return v
    auto = 1.0 / (n + 1)
    terms = concept_terms(
        c - u, concepts - u,
        auto if subject_threshold is None else subject_threshold,
        auto if abstract_threshold is None else abstract_threshold,
        upper_bound, layout,
    )
    return v + (w_g * terms).to(v.dtype)


@dataclass(frozen=True)
class ConceptDiffusion(Method):
    """ConceptDiffusion: conditionings ``[uncond, cond, concept0..n-1]``; concepts from ``request.concepts`` or,
    when it is empty, ``split_concepts(prompt, concept_splitter)``.

    ``concept_scale`` is w_g; ``start``/``stop`` the step window (fractions of the steps, inclusive, as the
    reference's warm-up and cool-down); ``subject_threshold`` τ_s and ``abstract_threshold`` τ_a (``None``:
    1/(n+1)); ``upper_bound`` u.
    """

    cfg_scale: float | None = cfg_scale_option()
    concept_scale: float = option(7.5, "concept guidance scale w_g", low=0, axis=True, flag="--concept-scales")
    start: float = start_option()
    stop: float = stop_option()
    subject_threshold: float | None = option(None, "subject threshold τ_s (none: 1/(n+1))", low=0)
    abstract_threshold: float | None = option(0.7, "abstract-concept threshold τ_a (none: 1/(n+1))", low=0)
    upper_bound: float = option(0.8, "subject terms with |cos| above it are subtracted (> 1: never)", low=0)
    concept_splitter: str = option("simple", "how concepts are split from a prompt without given concepts",
                                   choices=SPLITTERS, flag="--concept-splitter")
    name = "concept"
    title = "ConceptDiffusion: concept-score guidance towards neglected concepts"
    window_rule = "closed"

    def conditions(self, request):
        concepts = list(request.concepts) or split_concepts(request.prompt, self.concept_splitter)
        return {"uncond": request.negative_prompt, "cond": request.prompt,
                **{f"concept{j}": text for j, text in enumerate(concepts)}}

    def passes(self, step):
        passes = {"uncond": Pass("uncond"), "cond": Pass("cond")}
        if not self.active(step):
            return passes
        return passes | {name: Pass(name) for name in step.conditions if name.startswith("concept")}

    def degenerate(self, num_steps, conditions):
        concepts = [text for name, text in conditions.items() if name.startswith("concept")]
        if all(text == conditions["cond"] for text in concepts):  # none, or only the prompt itself: every term is 0
            return f"{len(concepts)} concept(s) besides the prompt itself: the concept terms vanish, equals cfg"
        if self.concept_scale == 0:
            return "concept scale 0: equals cfg"
        return self.empty_window(num_steps, "cfg")

    def combine(self, preds, step):
        concepts = [preds[name] for name in preds if name.startswith("concept")]
        stacked = torch.cat(concepts) if concepts else preds["cond"][:0]
        v = concept_prediction(preds["uncond"], preds["cond"], stacked, self.cfg_scale, self.concept_scale,
                               self.subject_threshold, self.abstract_threshold, self.upper_bound, step.layout)
        return step.postprocess_cfg(v, preds["cond"])
