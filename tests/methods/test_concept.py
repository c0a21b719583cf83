"""Tests for cslg.methods.concept: the ConceptDiffusion formulas, both latent layouts and end-to-end runs."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxPipeline

from cslg.families import adapter_for
from cslg.families.layout import LatentLayout
from cslg.methods import CFG, Request, Step, cfg
from cslg.methods.concept import (
    ConceptDiffusion,
    abstract_concept,
    concept_prediction,
    concept_terms,
    cosine,
    project_out,
    sparsify,
    split_concepts,
)
from cslg.guidance.sampling import sample

from ..helpers import tiny

REQUEST = Request("a red book and a gold clock")
RUN = dict(seed=0, steps=3, height=32, width=32, max_sequence_length=16, output_type="pt")
SD3_LAYOUT, FLUX_LAYOUT = LatentLayout(4, 6, patch=2), LatentLayout(4, 6, packed=4)  # [n, 4, 8, 12] latents


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
    along = s_p - s_a  # s_p = s_a + its component along S
    assert cosine(along, total) > 1 - 1e-5
    assert cosine(s_a, total) < 1e-5
    torch.testing.assert_close(project_out(s_p, torch.zeros_like(s_p)), s_p)


def test_channel_layouts_agree():
    """FLUX's packed layout holds the same channels as SD3's: per-channel work commutes with packing."""
    x = sd3_latent(2)
    assert torch.equal(FLUX_LAYOUT.channel_view(pack(x)).sort(dim=1).values, SD3_LAYOUT.channel_view(x).sort(dim=1).values)
    for level in (0.0, 0.3, 0.9):
        kept = sparsify(x, level, SD3_LAYOUT)
        assert torch.equal(sparsify(pack(x), level, FLUX_LAYOUT), pack(kept))
        fraction = (kept != 0).float().flatten(2).mean(-1)
        assert torch.all((fraction - (1 - level)).abs() <= 1 / 96 + 1e-6)  # 96 values per channel


def _preds(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """``[uncond, cond, concept0, ...]`` predictions by name from a stacked tensor."""
    names = ["uncond", "cond"] + [f"concept{j}" for j in range(x.shape[0] - 2)]
    return {name: x[i : i + 1] for i, name in enumerate(names)}


@pytest.mark.parametrize("layout", ["sd3", "flux"])
def test_inactive_terms_reduce_to_cfg(layout):
    preds = sd3_latent(3, n=4)
    preds = pack(preds) if layout == "flux" else preds
    step = Step(0, 10, layout=FLUX_LAYOUT if layout == "flux" else SD3_LAYOUT)
    method = ConceptDiffusion(cfg_scale=6.0, concept_scale=5.0, subject_threshold=0.0, abstract_threshold=0.0, upper_bound=2.0)
    assert torch.equal(method.combine(_preds(preds), step), cfg(preds[0:1], preds[1:2], 6.0))
    active = ConceptDiffusion(cfg_scale=6.0, subject_threshold=1.1, abstract_threshold=1.1)
    assert not torch.equal(active.combine(_preds(preds), step), cfg(preds[0:1], preds[1:2], 6.0))
    # outside the step window only the CFG passes run, and combine is plain CFG
    assert ConceptDiffusion(cfg_scale=6.0, start=0.5).combine(_preds(preds[:2]), step).equal(cfg(preds[0:1], preds[1:2], 6.0))


def test_subject_terms_sign():
    s_p, subjects = sd3_latent(4), sd3_latent(5, n=2)
    perp = [project_out(s[None], s_p) for s in subjects]
    no_abstract = dict(abstract_threshold=-1.0, upper_bound=2.0, layout=SD3_LAYOUT)
    torch.testing.assert_close(concept_terms(s_p, subjects, 1.1, **no_abstract), perp[0] + perp[1])
    # a subject more similar to the prompt than the upper bound is pushed away
    aligned = torch.stack([s_p[0] + 0.01 * subjects[0], subjects[1]])
    terms = concept_terms(s_p, aligned, subject_threshold=-1.0, abstract_threshold=-1.0, upper_bound=0.8, layout=SD3_LAYOUT)
    torch.testing.assert_close(terms, -project_out(aligned[0][None], s_p))


# A hand-made step: latents [1, C=2, 2, 2] (one 2x2 token), four values per channel.
TOKEN = LatentLayout(1, 1, patch=2)
U = torch.tensor([[0.5, -1.0, 2.0, 0.0], [1.0, 1.5, -0.5, 3.0]])
S_P = torch.tensor([[2.0, 1.0, 0.0, 1.0], [1.0, 0.0, 2.0, 1.0]])
S_1 = torch.tensor([[0.0, 1.0, 1.0, -1.0], [1.0, 2.0, -1.0, 0.0]])  # nearly orthogonal to s_p: added
S_2 = torch.tensor([[2.0, 1.0, 1.0, 0.0], [1.0, 0.0, 2.0, 2.0]])  # close to s_p: subtracted
HAND = dict(w=3.0, w_g=2.0, subject_threshold=0.3, abstract_threshold=0.9, upper_bound=0.8)


def _hand_prediction() -> torch.Tensor:
    """ṽ = u + w s_p + w_g (g_1 - g_2 + g_a), from the module docstring's formulas with plain tensor ops."""
    def dot(x, y):
        return (x * y).sum()

    def abs_cos(x, y):
        return dot(x, y).abs() / (dot(x, x) * dot(y, y)).sqrt()

    rho_1, rho_2 = abs_cos(S_P, S_1), abs_cos(S_P, S_2)
    assert rho_1 < HAND["subject_threshold"] and HAND["upper_bound"] < rho_2  # g_1 added, g_2 subtracted
    g_1 = S_1 - dot(S_1, S_P) / dot(S_P, S_P) * S_P
    g_2 = S_2 - dot(S_2, S_P) / dot(S_P, S_P) * S_P
    total = S_1 + S_2
    s_a = S_P - dot(S_P, total) / dot(total, total) * total
    rho_a = abs_cos(S_P, s_a)
    # active (ρ_a < τ_a); the quantile of 4 values at level ρ_a in (2/3, 1) lies between the 3rd and the 4th:
    # only the largest |s_a| of each channel survives: channel 0 at position 3, channel 1 at position 2
    assert 2 / 3 < rho_a < HAND["abstract_threshold"]
    assert s_a[0].abs().argmax() == 3 and s_a[1].abs().argmax() == 2
    g_a = s_a * torch.tensor([[0.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]])
    return U + HAND["w"] * S_P + HAND["w_g"] * (g_1 - g_2 + g_a)


@pytest.mark.parametrize("layout", ["sd3", "flux"])
def test_concept_prediction_by_hand(layout):
    """Active subject terms of both signs and an active abstract term against a hand computation."""
    def latent(x: torch.Tensor) -> torch.Tensor:
        x = x.reshape(1, 2, 2, 2)
        return pack(x) if layout == "flux" else x

    lay = LatentLayout(1, 1, packed=4) if layout == "flux" else TOKEN
    u, c = latent(U), latent(U + S_P)
    concepts = torch.cat([latent(U + S_1), latent(U + S_2)])
    expected = latent(_hand_prediction())
    got = concept_prediction(u, c, concepts, HAND["w"], HAND["w_g"], HAND["subject_threshold"],
                             HAND["abstract_threshold"], HAND["upper_bound"], lay)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    method = ConceptDiffusion(cfg_scale=HAND["w"], concept_scale=HAND["w_g"], subject_threshold=HAND["subject_threshold"],
                              abstract_threshold=HAND["abstract_threshold"], upper_bound=HAND["upper_bound"])
    preds = {"uncond": u, "cond": c, "concept0": concepts[:1], "concept1": concepts[1:]}
    torch.testing.assert_close(method.combine(preds, Step(0, 1, layout=lay)), expected, rtol=1e-5, atol=1e-5)
    assert (expected - cfg(u, c, HAND["w"])).abs().max() > 1.0, "no active term: the test could not fail"


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
    rows = method.conditions(REQUEST)
    assert rows == {"uncond": "", "cond": REQUEST.prompt, "concept0": "a red book", "concept1": "a gold clock"}
    assert method.conditions(Request("a red book and a gold clock", "blurry", ("book",))) == {
        "uncond": "blurry", "cond": REQUEST.prompt, "concept0": "book"}
    assert list(method.passes(Step(5, 10, conditions=tuple(rows)))) == ["uncond", "cond", "concept0", "concept1"]
    assert [p.condition for p in method.passes(Step(5, 10, conditions=tuple(rows))).values()] == list(rows)
    assert list(method.passes(Step(4, 10, conditions=tuple(rows)))) == ["uncond", "cond"]
    assert ConceptDiffusion().params()["subject_threshold"] is None  # 1/(n+1)


@pytest.mark.parametrize("preset", ["tiny-flux", "tiny-sd3"])
def test_end_to_end_with_one_batched_forward_of_n_plus_2(preset):
    adapter = adapter_for(tiny(preset))
    batch_sizes = []
    first_block = adapter.blocks[0][1]
    hook = first_block.register_forward_pre_hook(
        lambda m, args, kwargs: batch_sizes.append(kwargs["hidden_states"].shape[0]), with_kwargs=True
    )
    try:
        image = sample(adapter, ConceptDiffusion(), REQUEST, **RUN)
    finally:
        hook.remove()
    assert batch_sizes == [2 + 2] * RUN["steps"]  # n = 2 concepts
    assert torch.isfinite(image).all()
    reference = sample(adapter, CFG(7.5), REQUEST, **RUN)
    assert (image - reference).abs().max() > 1e-3


def test_degenerate_concepts_are_named():
    from cslg.methods import ConceptDiffusion

    m = ConceptDiffusion()
    assert "equals cfg" in m.degenerate(28, {"uncond": "", "cond": "a red book"})
    assert "equals cfg" in m.degenerate(28, {"uncond": "", "cond": "a red book", "concept0": "a red book"})
    assert m.degenerate(28, {"uncond": "", "cond": "a red book", "concept0": "a book"}) is None
    two = {"uncond": "", "cond": "a red book and a gold clock", "concept0": "a red book", "concept1": "a gold clock"}
    assert m.degenerate(28, two) is None
    assert "scale 0" in ConceptDiffusion(concept_scale=0.0).degenerate(28, two)
    assert "holds no step" in ConceptDiffusion(start=0.52, stop=0.58).degenerate(10, two)
