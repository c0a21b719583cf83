"""Tests for cslg.concept: the ConceptDiffusion formulas, both latent layouts and end-to-end runs."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from cslg.concept import (
    ConceptDiffusion,
    abstract_concept,
    channel_view,
    concept_terms,
    cosine,
    project_out,
    sparsify,
    split_concepts,
)
from cslg.denoiser import make_denoiser
from cslg.guidance import CFG, Request, cfg
from cslg.models import load_pipeline
from cslg.sampling import generate

REQUEST = Request("a red book and a gold clock")
RUN = dict(seed=0, steps=3, height=32, width=32, max_sequence_length=16, output_type="pt")


def sd3_latent(seed: int, n: int = 1) -> torch.Tensor:
    return torch.randn(n, 4, 8, 12, generator=torch.Generator().manual_seed(seed))


def pack(x: torch.Tensor) -> torch.Tensor:
    """FLUX packing of ``[n, C, H, W]`` latents into ``[n, H*W/4, C*4]``."""
    return FluxPipeline._pack_latents(x, x.shape[0], x.shape[1], x.shape[2], x.shape[3])


def test_abstract_concept_is_orthogonal_to_summed_scores():
    s_p, subjects = sd3_latent(0), sd3_latent(1, n=3)
    s_a = abstract_concept(s_p, subjects)
    total = subjects.sum(0, keepdim=True)
    assert abs(float((s_a * total).sum())) < 1e-4 * float(s_a.norm() * total.norm())
    torch.testing.assert_close(s_a + (s_p - s_a), s_p)  # s_p = s_a + its component along S
    assert cosine(s_a, total) < 1e-5
    torch.testing.assert_close(project_out(s_p, torch.zeros_like(s_p)), s_p)


def test_channel_layouts_agree():
    """FLUX's packed layout holds the same channels as SD3's: per-channel work commutes with packing."""
    x = sd3_latent(2)
    assert torch.equal(channel_view(pack(x)).sort(dim=1).values, channel_view(x).sort(dim=1).values)
    for level in (0.0, 0.3, 0.9):
        kept = sparsify(x, level)
        assert torch.equal(sparsify(pack(x), level), pack(kept))
        fraction = (kept != 0).float().flatten(2).mean(-1)
        assert torch.all((fraction - (1 - level)).abs() <= 1 / 96 + 1e-6)  # 96 values per channel


@pytest.mark.parametrize("layout", ["sd3", "flux"])
def test_inactive_terms_reduce_to_cfg(layout):
    preds = sd3_latent(3, n=4)
    preds = pack(preds) if layout == "flux" else preds
    method = ConceptDiffusion(cfg_scale=6.0, concept_scale=5.0, subject_threshold=0.0, abstract_threshold=0.0, upper_bound=2.0)
    assert torch.equal(method.combine(preds, 0, 10), cfg(preds[0:1], preds[1:2], 6.0))
    active = ConceptDiffusion(cfg_scale=6.0, subject_threshold=1.1, abstract_threshold=1.1)
    assert not torch.equal(active.combine(preds, 0, 10), cfg(preds[0:1], preds[1:2], 6.0))


def test_subject_terms_sign():
    s_p, subjects = sd3_latent(4), sd3_latent(5, n=2)
    perp = [project_out(s[None], s_p) for s in subjects]
    no_abstract = dict(abstract_threshold=-1.0, upper_bound=2.0)
    torch.testing.assert_close(concept_terms(s_p, subjects, 1.1, **no_abstract), perp[0] + perp[1])
    # a subject more similar to the prompt than the upper bound is pushed away
    aligned = torch.stack([s_p[0] + 0.01 * subjects[0], subjects[1]])
    terms = concept_terms(s_p, aligned, subject_threshold=-1.0, abstract_threshold=-1.0, upper_bound=0.8)
    torch.testing.assert_close(terms, -project_out(aligned[0][None], s_p))


def test_split_concepts():
    assert split_concepts("a red book and a gold clock") == ["a red book", "a gold clock"]
    assert split_concepts("a cat, a dog, and a bird") == ["a cat", "a dog", "a bird"]
    assert split_concepts("a sign that says 'rock and roll' and Joe's car") == ["a sign that says 'rock and roll'", "Joe's car"]
    assert split_concepts("a lighthouse") == ["a lighthouse"]
    assert split_concepts("") == []
    with pytest.raises(ValueError, match="splitter"):
        split_concepts("a dog", "nltk")


def test_rows_and_passes():
    method = ConceptDiffusion(start=0.5)
    assert method.rows(REQUEST) == ["", REQUEST.prompt, "a red book", "a gold clock"]
    assert method.rows(Request("a red book and a gold clock", "blurry", ("book",))) == ["blurry", REQUEST.prompt, "book"]
    assert [p.row for p in method.passes(5, 10, 4)] == [0, 1, 2, 3]
    assert [p.row for p in method.passes(4, 10, 4)] == [0, 1]
    assert ConceptDiffusion().params()["subject_threshold"] == "1/(n+1)"


@pytest.mark.parametrize("preset", ["tiny-flux", "tiny-sd3"])
def test_end_to_end_with_one_batched_forward_of_n_plus_2(preset):
    denoiser = make_denoiser(load_pipeline(preset, device="cpu"))
    batch_sizes = []
    first_block = denoiser.blocks[0][1]
    hook = first_block.register_forward_pre_hook(
        lambda m, args, kwargs: batch_sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        image = generate(denoiser, ConceptDiffusion(), REQUEST, **RUN)
    finally:
        hook.remove()
    assert batch_sizes == [2 + 2] * RUN["steps"]  # n = 2 concepts
    assert torch.isfinite(image).all()
    reference = generate(denoiser, CFG(7.5), REQUEST, **RUN)
    assert (image - reference).abs().max() > 1e-3
