"""A planted feature for every finder: on a tiny model in which one block, and only that block, writes a feature that
the positive prompt of each pair has and the negative prompt lacks, each finder ranks that block first under its
default settings (SD3's joint block, a FLUX double-stream and a FLUX single-stream block).

Construction (the finders' code is untouched). The feature is quoted text: every positive prompt quotes a word, no
negative prompt has a quote. In a freshly built tiny model, the T5 input embedding of the quote character becomes a
pure, large feature direction (one channel), so the T5 encoding of a quote token points along that channel. The
planted block gets a feature detector (a forward hook on the block, as a trained neuron would be): for each text
token entering the block, ``relu(cos(token, c) - TAU)`` with ``c`` the context embedder's image of that channel; the
sum over the text tokens times a fixed random vector is added to every image token the block outputs. The negative
prompt's detector output is zero, so the block's contribution exists only with the feature. (The construction of
``test_planted.py``, amplified text values, makes the block react to every prompt: a correlational finder ranks it
first, but skipping it moves the positive prediction away from the negative one, as it should.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cslg.analysis import rank_captures
from cslg.capture import CaptureConfig, load_capture, run_capture
from cslg.families import adapter_for, build_tiny
from cslg.options import FINDERS
from cslg.prompts import PromptPair

PAIRS = [
    PromptPair("a dog on a sidewalk", "a dog wearing a tag that says 'buddy'"),
    PromptPair("a red mug", "a red mug that says 'HELLO'"),
    PromptPair("a wall", "a wall with the word 'EXIT'"),
]
CASES = [("tiny-sd3", "3"), ("tiny-flux", "2"), ("tiny-flux", "s3")]
GAIN, TAU, MARK = 5.0, 0.5, 1e3


def planted(name: str, layer: str):
    """A fresh tiny pipeline whose block ``layer`` detects quoted text (see the module docstring)."""
    pipe = build_tiny(name)
    adapter = adapter_for(pipe, 3.5)
    t5, tokenizer = (pipe.text_encoder_3, pipe.tokenizer_3) if name == "tiny-sd3" else (pipe.text_encoder_2,
                                                                                          pipe.tokenizer_2)
    embedding = t5.get_input_embeddings().weight
    with torch.no_grad():
        for token in ("'", "▁'"):
            row = embedding[tokenizer.convert_tokens_to_ids(token)]
            row.zero_()
            row[0] = MARK
    c = F.normalize(adapter.transformer.context_embedder.weight[:, 0].detach(), dim=0)
    u = torch.randn(c.numel(), generator=torch.Generator().manual_seed(0))

    def detector(module, args, kwargs, output):
        text, image = output
        found = F.relu(F.cosine_similarity(kwargs["encoder_hidden_states"], c, dim=-1) - TAU).sum(1)
        return text, image + GAIN * found[:, None, None] * u

    adapter.block(layer).register_forward_hook(detector, with_kwargs=True)
    return adapter


@pytest.fixture(scope="module", params=CASES, ids=[f"{n}-{l}" for n, l in CASES])
def planted_captures(request, tmp_path_factory):
    """A capture file of every finder on the planted model."""
    name, layer = request.param
    adapter = planted(name, layer)
    folder = tmp_path_factory.mktemp(f"{name}-{layer}")
    files = {}
    for finder in FINDERS:
        config = CaptureConfig(model=name, prompts_file="-", pairs=len(PAIRS), steps=3, seed=0, height=32, width=32,
                               guidance=3.5 if name == "tiny-flux" else 5.0, max_sequence_length=32,
                               trajectory="independent" if finder == "contrast" else "shared", finder=finder)
        files[finder] = load_capture(run_capture(adapter, PAIRS, config, folder / f"{finder}.safetensors",
                                                 progress=False))
    return layer, files


@pytest.mark.parametrize("finder", FINDERS)
def test_planted_block_ranks_first_under_every_finders_default(planted_captures, finder):
    layer, files = planted_captures
    ranking, _ = rank_captures([files[finder]])
    assert ranking.top(1) == [layer], ranking.as_rows()[:3]
    best, second = (float(ranking.mean[i]) for i in ranking.order[:2])
    if finder == "ablation":  # skipping the planted block brings p most of the way to n; the others barely move it
        assert best < 0.9 and second > 0.95


def test_ablation_ratio_is_near_one_for_the_other_blocks(planted_captures):
    """Only the planted block moves the positive prediction toward the negative one when skipped."""
    layer, files = planted_captures
    cap = files["ablation"]
    ratio = (cap.distance / cap.reference_distance[..., None]).mean((0, 1))
    others = [i for i, n in enumerate(cap.layer_names) if n != layer]
    assert float(ratio[cap.layer_names.index(layer)]) < 0.9
    assert float((ratio[others] - 1).abs().max()) < 0.3


def test_patching_is_cumulative_so_its_default_ranks_the_drop(planted_captures):
    """Patching replaces the residual stream: from the planted block on, every patched block gives a small distance
    (the feature is no longer there), before it the distance stays. The raw ratio cannot tell the planted block from
    the later ones; its change along depth (the default) can."""
    layer, files = planted_captures
    cap = files["patching"]
    ratio = (cap.distance / cap.reference_distance[..., None]).mean((0, 1))
    at = cap.layer_names.index(layer)
    assert float(ratio[at:].max()) < 0.2 and float(ratio[:at].min()) > 0.9


def test_a_block_that_reacts_to_every_prompt_is_first_for_contrast_and_last_for_ablation(tmp_path):
    """Where the finders disagree: ``test_planted.py``'s block amplifies its text values for every prompt. The two
    prompts' activations come apart there (contrast ranks it first), but skipping it moves the positive prediction
    away from the negative one (ablation ranks it last)."""
    from .test_planted import PAIRS as AMPLIFIED_PAIRS, PLANTED, _planted

    adapter = _planted("tiny-sd3")
    rankings = {}
    for finder in ("contrast", "ablation"):
        config = CaptureConfig(model="tiny-sd3", prompts_file="-", pairs=len(AMPLIFIED_PAIRS), steps=2, seed=0,
                               height=32, width=32, guidance=7.0, max_sequence_length=32,
                               trajectory="independent" if finder == "contrast" else "shared", finder=finder)
        capture = run_capture(adapter, AMPLIFIED_PAIRS, config, tmp_path / f"{finder}.safetensors", progress=False)
        rankings[finder] = rank_captures([load_capture(capture)])[0]
    assert rankings["contrast"].top(1) == [PLANTED["tiny-sd3"]]
    assert rankings["ablation"].order[-1] == adapter.layer_names.index(PLANTED["tiny-sd3"])
