"""The shipped prompt files of every feature: each loads through cslg.prompts (pairs for capture, prompts for
grids), says which scorers it is meant for, and is well formed (no duplicates, pairs differ, targets and concepts
occur in their prompts)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cslg.prompts import DatasetInfo, PromptFileError, dataset_info, load_generation_prompts, load_pairs
from tests.test_prompts import QUOTE_CHARS, quoted_strings

DATASETS = Path(__file__).resolve().parent.parent / "prompt_datasets"
SCORERS = {"ocr", "clip", "aesthetic-v1", "aesthetic-v2", "hands", "pickscore", "imagereward", "hpsv2", "vqascore",
           "vlm-judge", "fid", "kid"}  # the scorer names of the evaluation step
PAIR_FILES = ["prompts_text_notext.json", "hands_pairs.json", "aesthetics_pairs.json", "misspelled_text_pairs.json"]
PROMPT_FILES = ["text_eval_prompts.json", "paper_complex_prompts.json", "cc500_style_prompts.json",
                "hands_eval_prompts.json", "aesthetics_eval_prompts.json", "long_text_prompts.json"]


def test_every_file_is_a_pair_or_a_prompt_file_and_says_what_it_is_for():
    assert sorted(PAIR_FILES + PROMPT_FILES) == sorted(p.name for p in DATASETS.glob("*.json"))
    readme = (DATASETS / "README.md").read_text(encoding="utf-8")
    for name in PAIR_FILES + PROMPT_FILES:
        info = dataset_info(DATASETS / name)
        assert info.about and info.scorers, name
        assert set(info.scorers) <= SCORERS and len(set(info.scorers)) == len(info.scorers), name
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert all(f"`{s}`" in row for s in info.scorers), f"README row of {name} names other scorers"


@pytest.mark.parametrize("name", PAIR_FILES)
def test_pair_files_have_distinct_pairs_that_differ(name):
    pairs = load_pairs(DATASETS / name)
    assert all(p.negative != p.positive for p in pairs)
    assert len({p.negative for p in pairs}) == len(pairs) and len({p.positive for p in pairs}) == len(pairs)


@pytest.mark.parametrize("name", PROMPT_FILES)
def test_prompt_files_have_distinct_prompts_and_targets_in_them(name):
    prompts = load_generation_prompts(DATASETS / name)  # the loader refuses a repeated prompt
    assert len({p.prompt.lower() for p in prompts}) == len(prompts)
    for p in prompts:
        for parts in (p.expected_text or (), p.concepts or ()):
            pos = 0
            for part in parts:  # each target / concept occurs verbatim, in order
                pos = p.prompt.find(part, pos)
                assert pos >= 0, f"{part!r} is not in {p.prompt!r} (in order)"
                pos += len(part)


def test_hands_eval_prompts_show_hands():
    prompts = load_generation_prompts(DATASETS / "hands_eval_prompts.json")
    assert 25 <= len(prompts) <= 40 and all("hand" in p.prompt for p in prompts)
    assert all(p.expected_text is None and p.concepts is None for p in prompts)


def test_aesthetics_pairs_describe_the_same_scene_richly():
    pairs = load_pairs(DATASETS / "aesthetics_pairs.json")
    assert 25 <= len(pairs) <= 40
    for p in pairs:
        assert p.positive.startswith((p.negative + " ", p.negative + ",")), p  # the plain scene, then its description
        assert len(p.positive.split()) >= len(p.negative.split()) + 8
    prompts = load_generation_prompts(DATASETS / "aesthetics_eval_prompts.json")
    assert 25 <= len(prompts) <= 40 and all(len(p.prompt.split()) <= 8 for p in prompts)  # plain on purpose


def test_misspelled_pairs_differ_only_in_their_quoted_text():
    pairs = load_pairs(DATASETS / "misspelled_text_pairs.json")
    assert 25 <= len(pairs) <= 40
    for p in pairs:
        (wrong,), rest_negative = quoted_strings(p.negative)
        (right,), rest_positive = quoted_strings(p.positive)
        assert rest_negative == rest_positive and wrong != right, p
        assert wrong.upper() != right.upper() and len(wrong.split()) == len(right.split())


def test_long_text_prompts_have_no_quotes_and_imply_their_text():
    prompts = load_generation_prompts(DATASETS / "long_text_prompts.json")
    assert 15 <= len(prompts) <= 30
    for p in prompts:
        assert not any(c in p.prompt for c in QUOTE_CHARS), p.prompt
        assert p.expected_text and sum(len(t.split()) for t in p.expected_text) >= 2, p.prompt


def test_cc500_style_prompts_bind_one_colour_to_each_object():
    colours = {"red", "blue", "green", "yellow", "black", "white", "purple", "orange", "pink", "brown", "gray", "gold",
               "silver"}
    for p in load_generation_prompts(DATASETS / "cc500_style_prompts.json"):
        assert 2 <= len(p.concepts) <= 3
        for concept in p.concepts:
            article, colour, *thing = concept.split()
            assert article in ("a", "an") and colour in colours and thing, concept


def test_wrapped_files_load_as_lists_and_errors_name_the_file(tmp_path):
    entries = [{"negative": "a cup", "positive": "hands and a cup"}]
    plain, wrapped = tmp_path / "plain.json", tmp_path / "wrapped.json"
    plain.write_text(json.dumps(entries))
    wrapped.write_text(json.dumps({"about": "hands", "scorers": ["hands"], "entries": entries}))
    assert load_pairs(wrapped) == load_pairs(plain)
    assert dataset_info(wrapped) == DatasetInfo("hands", ("hands",)) and dataset_info(plain) == DatasetInfo()
    for content, words in [({"entries": entries, "extra": 1}, "'extra' unknown"), ({"about": "x"}, "without 'entries'"),
                           ({"entries": {"a": 1}}, "'entries' must be a list"), ({"entries": []}, "empty")]:
        wrapped.write_text(json.dumps(content))
        with pytest.raises(PromptFileError, match=words) as info:
            load_pairs(wrapped)
        assert str(wrapped) in str(info.value)
    wrapped.write_text(json.dumps({"scorers": "hands", "entries": entries}))
    with pytest.raises(PromptFileError, match="'scorers' must be a list"):
        dataset_info(wrapped)
