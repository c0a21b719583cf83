"""A planted feature: a tiny model in which one chosen block carries the difference between the two prompts of a
pair must rank that block first under the default analysis, in both trajectory modes.

Construction (the measurement code is untouched): in a freshly built tiny model, the text values of the chosen
block's joint attention (``attn.add_v_proj``, weight and bias) are multiplied by 20, so the image tokens leaving
that block depend on the prompt far more than anywhere else. Every other block keeps its random weights.
"""

from __future__ import annotations

import pytest
import torch

from cslg.analysis import per_pair_scores, rank_layers
from cslg.capture import CaptureConfig, capture_pair
from cslg.families import adapter_for
from cslg.prompts import PromptPair
from cslg.families import build_tiny

PAIRS = [
    PromptPair("a dog on a sidewalk", "a dog wearing a tag that says 'buddy'"),
    PromptPair("a red mug", "a red mug that says 'HELLO'"),
    PromptPair("a wall", "a wall with the word 'EXIT'"),
]
PLANTED = {"tiny-sd3": "3", "tiny-flux": "2"}
GAIN = 20.0


def _planted(name: str):
    pipe = build_tiny(name)
    adapter = adapter_for(pipe, 3.5)
    attn = adapter.block(PLANTED[name]).attn
    with torch.no_grad():
        attn.add_v_proj.weight.mul_(GAIN)
        attn.add_v_proj.bias.mul_(GAIN)
    return adapter


@pytest.fixture(scope="module", params=list(PLANTED))
def captures(request):
    """cosine and input cosine of every pair, for both trajectory modes, on the planted model."""
    name = request.param
    adapter = _planted(name)
    out = {}
    for trajectory in ("independent", "shared"):
        config = CaptureConfig(model=name, prompts_file="-", pairs=len(PAIRS), steps=4, seed=0, height=32, width=32,
                               guidance=3.5 if name == "tiny-flux" else 7.0, max_sequence_length=32,
                               trajectory=trajectory)
        parts = [capture_pair(adapter, pair, config) for pair in PAIRS]
        out[trajectory] = (torch.stack([p["cosine"] for p in parts]), torch.stack([p["input_cosine"] for p in parts]))
    return name, adapter.layer_names, out


@pytest.mark.parametrize("trajectory", ["independent", "shared"])
def test_planted_block_ranks_first_by_default(captures, trajectory):
    name, names, out = captures
    cosine, input_cosine = out[trajectory]
    ranking = rank_layers(per_pair_scores(cosine, "difference", None, input_cosine), names)
    assert ranking.top(1) == [PLANTED[name]]
    assert float(ranking.mean[ranking.order[0]]) < 10 * float(ranking.mean[ranking.order[1]])  # by a wide margin


def test_paper_baseline_charges_the_trajectory_drift_to_block_0(captures):
    """Why the input baseline is the default: with independent trajectories the two latents drift apart after
    step 0, and with s_{-1} = 1 that drift lands on block 0 (on tiny SD3 it outranks the planted block)."""
    name, names, out = captures
    cosine, input_cosine = out["independent"]
    paper = per_pair_scores(cosine, "difference", None, None).mean(0)
    fair = per_pair_scores(cosine, "difference", None, input_cosine).mean(0)
    assert paper[0] < fair[0] - 1e-3  # block 0 absorbs the input drift under the paper's baseline
    torch.testing.assert_close(paper[1:], fair[1:])  # and nothing else changes
    if name == "tiny-sd3":
        assert rank_layers(paper[None], names).top(1) == ["0"]
