"""Tests for cslg.prompts and the shipped prompt files in prompt_datasets/."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cslg.prompts import (
    GenerationPrompt,
    PromptFileError,
    PromptPair,
    load_generation_prompts,
    load_pairs,
)

DATASETS = Path(__file__).resolve().parent.parent / "prompt_datasets"
QUOTE_CHARS = "\"“”‘’'"

# A small, local quote detector (independent of any extractor in cslg/).
_DOUBLE = re.compile(r'"([^"]+)"|“([^”]+)”')
_SINGLE = re.compile(r"(?<!\w)'([^']+)'(?!\w)|‘([^’]+)’(?!\w)")


def quoted_strings(prompt: str) -> tuple[list[str], str]:
    """Quoted strings in ``prompt`` (double quotes first, then single) and the prompt with them removed."""
    found = [a or b for a, b in _DOUBLE.findall(prompt)]
    rest = _DOUBLE.sub(" ", prompt)
    found += [a or b for a, b in _SINGLE.findall(rest)]
    rest = _SINGLE.sub(" ", rest)
    return found, rest


def write(tmp_path: Path, content, name: str = "prompts.json") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


def error_for(loader, path: Path, **kwargs) -> str:
    with pytest.raises(PromptFileError) as info:
        loader(path, **kwargs)
    message = str(info.value)
    assert str(path) in message
    return message


# --------------------------------------------------------------------------- the quote detector itself


def test_quote_detector():
    assert quoted_strings("a sign that says 'OPEN'")[0] == ["OPEN"]
    assert quoted_strings('a sign that says "JOE\'S DINER"')[0] == ["JOE'S DINER"]
    assert quoted_strings("a board “MOM’S KITCHEN” and ‘HI’, 'A', 'B'")[0] == ["MOM’S KITCHEN", "HI", "A", "B"]
    assert quoted_strings("a person's hands")[0] == []


# --------------------------------------------------------------------------- shipped files


def test_text_pairs_file():
    pairs = load_pairs(DATASETS / "prompts_text_notext.json")
    assert len(pairs) == 100
    assert all(isinstance(p, PromptPair) and p.feature == "text" for p in pairs)
    assert len({p.positive for p in pairs}) == 100 and len({p.negative for p in pairs}) == 100
    styles = {"'": 0, '"': 0, "‘": 0, "“": 0}
    several = 0
    for i, pair in enumerate(pairs):
        assert not any(c in pair.negative for c in QUOTE_CHARS), f"entry {i}: no_text has a quote"
        assert pair.positive.startswith(pair.negative), f"entry {i}: with_text does not extend no_text"
        found, rest = quoted_strings(pair.positive)
        assert found and all(s.strip() for s in found), f"entry {i}: no quoted text in {pair.positive!r}"
        assert not any(c in rest for c in QUOTE_CHARS), f"entry {i}: unbalanced or ambiguous quotes"
        several += len(found) > 1
        added = pair.positive[len(pair.negative):]
        for c in styles:
            styles[c] += c in added
    assert several >= 5
    assert all(n >= 5 for n in styles.values()), styles
    assert sum('"' in p.positive and "'" in p.positive for p in pairs) >= 3  # apostrophes inside double quotes


def test_hands_pairs_file():
    pairs = load_pairs(DATASETS / "hands_pairs.json")
    assert 35 <= len(pairs) <= 50
    assert all(p.feature == "generic" and p.negative != p.positive for p in pairs)
    assert all("hand" not in p.negative.lower() and "hand" in p.positive.lower() for p in pairs)


def _in_order(prompt: str, parts: tuple[str, ...]) -> bool:
    pos = 0
    for part in parts:
        pos = prompt.find(part, pos)
        if pos < 0:
            return False
        pos += len(part)
    return True


def test_text_eval_prompts_file():
    prompts = load_generation_prompts(DATASETS / "text_eval_prompts.json")
    assert 25 <= len(prompts) <= 40
    for i, p in enumerate(prompts):
        assert p.expected_text, f"entry {i}"
        assert list(p.expected_text) == sorted(quoted_strings(p.prompt)[0], key=p.prompt.find), f"entry {i}"
        assert _in_order(p.prompt, p.expected_text), f"entry {i}"
    assert sum(len(p.expected_text) > 1 for p in prompts) >= 5
    assert sum(any("'" in s for s in p.expected_text) for p in prompts) >= 3


def test_cc500_style_prompts_file():
    prompts = load_generation_prompts(DATASETS / "cc500_style_prompts.json")
    assert 55 <= len(prompts) <= 70
    for i, p in enumerate(prompts):
        assert p.concepts and len(p.concepts) >= 2, f"entry {i}"
        assert p.expected_text is None
        assert _in_order(p.prompt, p.concepts), f"entry {i}"


def test_readme_mentions_every_file():
    readme = (DATASETS / "README.md").read_text(encoding="utf-8")
    for path in DATASETS.glob("*.json"):
        assert path.name in readme


# --------------------------------------------------------------------------- loaders: good input


def test_load_pairs_both_styles_and_limit(tmp_path):
    text = write(tmp_path, [{"no_text": "a dog", "with_text": "a dog, tag 'A'"}] * 3, "t.json")
    assert load_pairs(text, limit=2) == [PromptPair("a dog", "a dog, tag 'A'", "text")] * 2
    generic = write(tmp_path, [{"negative": "a cup", "positive": "hands and a cup"}], "g.json")
    assert load_pairs(generic, limit=1) == [PromptPair("a cup", "hands and a cup", "generic")]
    assert load_pairs(str(generic)) == load_pairs(generic)


def test_load_generation_prompts_strings_and_objects(tmp_path):
    path = write(tmp_path, ["a cat", {"prompt": "a sign 'HI'", "expected_text": ["HI"]},
                            {"prompt": "a red cup and a blue box", "concepts": ["a red cup", "a blue box"]}])
    assert load_generation_prompts(path) == [
        GenerationPrompt("a cat"),
        GenerationPrompt("a sign 'HI'", expected_text=("HI",)),
        GenerationPrompt("a red cup and a blue box", concepts=("a red cup", "a blue box")),
    ]
    assert load_generation_prompts(path, limit=1) == [GenerationPrompt("a cat")]


# --------------------------------------------------------------------------- loaders: file-level errors


@pytest.mark.parametrize("loader", [load_pairs, load_generation_prompts])
def test_missing_file(tmp_path, loader):
    assert "not found" in error_for(loader, tmp_path / "nope.json")


@pytest.mark.parametrize("loader", [load_pairs, load_generation_prompts])
def test_invalid_json_names_line_and_column(tmp_path, loader):
    path = write(tmp_path, '[\n  {"no_text": "a", "with_text": "b"},\n  oops\n]')
    message = error_for(loader, path)
    assert "line 3" in message and "column 3" in message


@pytest.mark.parametrize("loader", [load_pairs, load_generation_prompts])
@pytest.mark.parametrize("content, words", [({"no_text": "a", "with_text": "b"}, "object"), ([], "empty"),
                                            ("\"a prompt\"", "string")])
def test_top_level_must_be_a_nonempty_list(tmp_path, loader, content, words):
    path = write(tmp_path, content)
    assert words in error_for(loader, path)


@pytest.mark.parametrize("loader", [load_pairs, load_generation_prompts])
def test_non_utf8_file(tmp_path, loader):
    path = tmp_path / "latin1.json"
    path.write_bytes('["caf\xe9"]'.encode("latin-1"))
    assert "UTF-8" in error_for(loader, path)


@pytest.mark.parametrize("loader", [load_pairs, load_generation_prompts])
def test_directory_is_not_a_file(tmp_path, loader):
    assert "not a file" in error_for(loader, tmp_path)


# --------------------------------------------------------------------------- load_pairs: entry errors

GOOD = {"no_text": "a dog", "with_text": "a dog, tag 'A'"}


@pytest.mark.parametrize(
    "entry, words",
    [
        ("a dog", ["entry 1", "string", "'no_text'/'with_text'", "'negative'/'positive'"]),
        ([1, 2], ["entry 1", "list"]),
        ({"no_text": "a dog"}, ["entry 1", "missing", "'with_text'"]),
        ({"positive": "hands"}, ["entry 1", "missing", "'negative'"]),
        ({"prompt": "a dog"}, ["entry 1", "'no_text'/'with_text'", "'negative'/'positive'"]),
        ({"no_text": "a", "with_text": 3}, ["entry 1", "'with_text'", "must be a string"]),
        ({"no_text": None, "with_text": "b"}, ["entry 1", "'no_text'", "must be a string", "null"]),
        ({"no_text": "  ", "with_text": "b"}, ["entry 1", "'no_text'", "empty"]),
        ({"no_text": "a", "with_text": "b", "negative": "c"}, ["entry 1", "mixes", "'negative'", "'no_text'"]),
        ({"no_text": "a", "with_text": "b", "note": "x"}, ["entry 1", "unknown", "'note'"]),
    ],
)
def test_load_pairs_entry_errors(tmp_path, entry, words):
    message = error_for(load_pairs, write(tmp_path, [GOOD, entry, GOOD]))
    for word in words:
        assert word in message, (word, message)


def test_load_pairs_one_key_style_per_file(tmp_path):
    path = write(tmp_path, [GOOD, GOOD, {"negative": "a", "positive": "b"}])
    message = error_for(load_pairs, path)
    assert "entry 2" in message and "'negative'/'positive'" in message and "entry 0" in message


def test_entry_index_counts_from_zero(tmp_path):
    assert "entry 0" in error_for(load_pairs, write(tmp_path, [{"with_text": "x"}]))


@pytest.mark.parametrize("loader, content", [(load_pairs, [GOOD] * 3), (load_generation_prompts, ["a", "b", "c"])])
def test_limit_errors(tmp_path, loader, content):
    path = write(tmp_path, content)
    message = error_for(loader, path, limit=4)
    assert "limit 4" in message and "has 3" in message
    for bad in (0, -1, True, 1.5):
        assert "positive integer" in error_for(loader, path, limit=bad)


# --------------------------------------------------------------------------- load_generation_prompts: entry errors


@pytest.mark.parametrize(
    "entry, words",
    [
        ("", ["entry 1", "empty"]),
        (7, ["entry 1", "number"]),
        ({"expected_text": ["A"]}, ["entry 1", "missing", "'prompt'"]),
        ({"prompt": ["a"]}, ["entry 1", "'prompt'", "must be a string", "list"]),
        ({"prompt": " "}, ["entry 1", "'prompt'", "empty"]),
        ({"prompt": "a", "text": ["A"], "seed": 1}, ["entry 1", "unknown", "'seed'", "'text'"]),
        ({"prompt": "a 'A'", "expected_text": "A"}, ["entry 1", "'expected_text'", "list of strings"]),
        ({"prompt": "a 'A'", "expected_text": []}, ["entry 1", "'expected_text'", "empty list"]),
        ({"prompt": "a 'A'", "expected_text": ["A", 2]}, ["entry 1", "'expected_text'", "item 1", "string"]),
        ({"prompt": "a b", "concepts": ["a", ""]}, ["entry 1", "'concepts'", "item 1", "empty"]),
        ({"prompt": "a b", "concepts": {"a": 1}}, ["entry 1", "'concepts'", "object"]),
    ],
)
def test_load_generation_prompts_entry_errors(tmp_path, entry, words):
    message = error_for(load_generation_prompts, write(tmp_path, ["fine", entry]))
    for word in words:
        assert word in message, (word, message)


def test_prompt_file_error_is_a_value_error():
    assert issubclass(PromptFileError, ValueError)
