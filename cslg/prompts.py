"""Prompt files: contrastive prompt pairs (step 1) and generation prompts (step 3).

Pair files are a JSON list of objects, all with the same key style:

    [{"no_text": "a dog on a sidewalk", "with_text": "a dog on a sidewalk, wearing a tag that says 'buddy'"}, ...]
    [{"negative": "a cup of coffee on a table", "positive": "hands holding a cup of coffee"}, ...]

``no_text``/``with_text`` pairs have the feature ``"text"``; ``negative``/``positive``
pairs are ``"generic"`` (hands, aesthetics, ...). The negative prompt lacks the feature,
the positive prompt has it.

Generation prompt files are a JSON list whose entries are either a prompt string or an
object ``{"prompt": str, "expected_text": [str, ...], "concepts": [str, ...]}`` (the last
two optional).

Either list may instead be wrapped in an object that describes the file:

    {"about": "hands visible vs not", "scorers": ["hands", "pickscore"], "entries": [...]}

``about`` (one line) and ``scorers`` (the names of the scorers the file is meant for) are read by
:func:`dataset_info`; the loaders read ``entries``.

Every problem with a file raises :class:`PromptFileError` naming the file, the 0-based
entry index and the key concerned.
"""

from __future__ import annotations

import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Key styles of pair files: (negative key, positive key) -> feature name.
PAIR_KEY_STYLES: dict[tuple[str, str], str] = {
    ("no_text", "with_text"): "text",
    ("negative", "positive"): "generic",
}
GENERATION_KEYS: tuple[str, ...] = ("prompt", "expected_text", "concepts")
WRAPPER_KEYS: tuple[str, ...] = ("about", "scorers", "entries")  # a file as an object: its description and entries
DATASETS = "prompt_datasets"  # the toolkit's prompt files: the clone's folder, shipped in the wheel as cslg.prompt_datasets


class PromptFileError(ValueError):
    """A prompt file is missing or malformed; the message names the file (and entry and key)."""


@dataclass(frozen=True)
class PromptPair:
    """One contrastive pair: ``negative`` lacks the feature, ``positive`` has it."""

    negative: str
    positive: str
    feature: str = "generic"


@dataclass(frozen=True)
class GenerationPrompt:
    """A prompt to generate from, with optional OCR targets (in order) and concept phrases."""

    prompt: str
    expected_text: tuple[str, ...] | None = None
    concepts: tuple[str, ...] | None = None


@dataclass(frozen=True)
class DatasetInfo:
    """What a prompt file says about itself: a one-line description and the scorers it is meant for."""

    about: str | None = None
    scorers: tuple[str, ...] = ()


# --------------------------------------------------------------------------- public loaders


def dataset_info(path: str | os.PathLike) -> DatasetInfo:
    """The ``about`` and ``scorers`` of a prompt file written as an object (a plain list says nothing: empty)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        return DatasetInfo()
    _unwrap(data, path)
    about = data.get("about")
    if about is not None and (not isinstance(about, str) or not about.strip()):
        raise PromptFileError(f"{path}: key 'about' must be a non-empty string")
    return DatasetInfo(about, _optional_string_list(data, "scorers", str(path)) or ())



def load_pairs(path: str | os.PathLike, limit: int | None = None) -> list[PromptPair]:
    """Load contrastive prompt pairs; ``limit`` keeps the first ``limit`` pairs."""
    path = Path(path)
    entries = _read_entries(path, limit)
    pairs: list[PromptPair] = []
    first_style: tuple[str, str] | None = None
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if not isinstance(entry, dict):
            raise PromptFileError(f"{where} is a {_json_type(entry)}, expected an object with {_expected_pair_keys()}")
        style = _pair_style(entry, where)
        if first_style is None:
            first_style = style
        elif style != first_style:
            raise PromptFileError(
                f"{where} uses the keys {_keys(style)} but entry 0 uses {_keys(first_style)}; "
                "use one key style per file"
            )
        unknown = sorted(set(entry) - set(style))
        if unknown:
            raise PromptFileError(f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; expected {_keys(style)}")
        negative_key, positive_key = style
        pairs.append(
            PromptPair(
                negative=_nonempty_string(entry, negative_key, where),
                positive=_nonempty_string(entry, positive_key, where),
                feature=PAIR_KEY_STYLES[style],
            )
        )
    return _apply_limit(pairs, limit, path, "pairs")


def load_generation_prompts(path: str | os.PathLike, limit: int | None = None) -> list[GenerationPrompt]:
    """Load generation prompts (strings or objects); ``limit`` keeps the first ``limit`` prompts."""
    path = Path(path)
    entries = _read_entries(path, limit)
    prompts: list[GenerationPrompt] = []
    for index, entry in enumerate(entries):
        where = f"{path}: entry {index}"
        if isinstance(entry, str):
            if not entry.strip():
                raise PromptFileError(f"{where} is an empty prompt string")
            prompts.append(GenerationPrompt(prompt=entry))
            continue
        if not isinstance(entry, dict):
            raise PromptFileError(f"{where} is a {_json_type(entry)}, expected a prompt string or an object")
        unknown = sorted(set(entry) - set(GENERATION_KEYS))
        if unknown:
            raise PromptFileError(
                f"{where} has unknown key(s) {', '.join(map(repr, unknown))}; "
                f"allowed keys are {', '.join(map(repr, GENERATION_KEYS))}"
            )
        if "prompt" not in entry:
            raise PromptFileError(f"{where} is missing the key 'prompt'")
        prompts.append(
            GenerationPrompt(
                prompt=_nonempty_string(entry, "prompt", where),
                expected_text=_optional_string_list(entry, "expected_text", where),
                concepts=_optional_string_list(entry, "concepts", where),
            )
        )
    first: dict[str, int] = {}
    for index, prompt in enumerate(prompts):
        if prompt.prompt in first:  # images are named by prompt: a second entry would overwrite the first
            raise PromptFileError(f"{path}: entries {first[prompt.prompt]} and {index} have the same prompt; "
                                  "merge them (expected_text and concepts are lists)")
        first[prompt.prompt] = index
    return _apply_limit(prompts, limit, path, "prompts")


# --------------------------------------------------------------------------- helpers


def locate(path: str | os.PathLike) -> Path:
    """``path``, or, for a ``prompt_datasets/...`` path that does not exist here, the toolkit's own copy of that file
    (inside the installed package, or in the source checkout), so the default prompt files are found outside a
    clone and from any working directory."""
    given = Path(path)
    if given.exists() or given.is_absolute() or given.parts[:1] != (DATASETS,):
        return given
    spec = importlib.util.find_spec(f"cslg.{DATASETS}")
    installed = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    for base in (*installed, Path(__file__).resolve().parents[1] / DATASETS):
        if (candidate := base.joinpath(*given.parts[1:])).is_file():
            return candidate
    return given


def _read_entries(path: Path, limit: int | None) -> list[Any]:
    """Check ``limit``, read the file and return its JSON list of entries (non-empty): the top level, or the
    ``entries`` of a file written as an object."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise PromptFileError(f"{path}: limit must be a positive integer or None, got {limit!r}")
    data = _read_json(path)
    if isinstance(data, dict):
        data = _unwrap(data, locate(path))
    if not isinstance(data, list):
        raise PromptFileError(f"{locate(path)}: top level is a {_json_type(data)}, expected a JSON list of entries")
    if not data:
        raise PromptFileError(f"{locate(path)}: the list of entries is empty")
    return data


def _unwrap(data: dict, path: Path) -> Any:
    """The ``entries`` of a file written as an object; its other keys must be ``WRAPPER_KEYS``."""
    if "entries" not in data:
        raise PromptFileError(f"{path}: top level is an object without 'entries'; expected a JSON list of entries "
                              f"or an object with {', '.join(map(repr, WRAPPER_KEYS))}")
    if unknown := sorted(set(data) - set(WRAPPER_KEYS)):
        raise PromptFileError(f"{path}: top-level key(s) {', '.join(map(repr, unknown))} unknown; allowed keys are "
                              f"{', '.join(map(repr, WRAPPER_KEYS))}")
    if not isinstance(data["entries"], list):
        raise PromptFileError(f"{path}: key 'entries' must be a list, got a {_json_type(data['entries'])}")
    return data["entries"]


def _read_json(path: str | os.PathLike) -> Any:
    """The decoded JSON of a prompt file (found with ``locate``)."""
    path = locate(path)
    if not path.exists():
        raise PromptFileError(f"{path}: prompt file not found")
    if not path.is_file():
        raise PromptFileError(f"{path}: not a file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise PromptFileError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
    return data


def _apply_limit(items: list, limit: int | None, path: Path, noun: str) -> list:
    """Return the first ``limit`` items; a limit beyond the file length is an error."""
    if limit is None:
        return items
    if limit > len(items):
        raise PromptFileError(f"{path}: limit {limit} is larger than the file, which has {len(items)} {noun}")
    return items[:limit]


def _pair_style(entry: dict, where: str) -> tuple[str, str]:
    """Which key style an object uses; errors on missing keys or mixed styles."""
    present = [style for style in PAIR_KEY_STYLES if any(key in entry for key in style)]
    if len(present) > 1:
        found = sorted(key for style in present for key in style if key in entry)
        raise PromptFileError(
            f"{where} mixes key styles ({', '.join(map(repr, found))}); use either {_expected_pair_keys()}"
        )
    if not present:
        raise PromptFileError(f"{where} has none of the expected keys: {_expected_pair_keys()}")
    style = present[0]
    for key in style:
        if key not in entry:
            raise PromptFileError(f"{where} is missing the key {key!r} (expected {_keys(style)})")
    return style


def _nonempty_string(entry: dict, key: str, where: str) -> str:
    value = entry[key]
    if not isinstance(value, str):
        raise PromptFileError(f"{where}: key {key!r} must be a string, got a {_json_type(value)}")
    if not value.strip():
        raise PromptFileError(f"{where}: key {key!r} is an empty string")
    return value


def _optional_string_list(entry: dict, key: str, where: str) -> tuple[str, ...] | None:
    """A non-empty list of non-empty strings, or None when the key is absent."""
    if key not in entry:
        return None
    value = entry[key]
    if not isinstance(value, list):
        raise PromptFileError(f"{where}: key {key!r} must be a list of strings, got a {_json_type(value)}")
    if not value:
        raise PromptFileError(f"{where}: key {key!r} is an empty list (leave the key out instead)")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise PromptFileError(f"{where}: key {key!r} item {i} must be a string, got a {_json_type(item)}")
        if not item.strip():
            raise PromptFileError(f"{where}: key {key!r} item {i} is an empty string")
    return tuple(value)


def _keys(style: tuple[str, str]) -> str:
    return f"{style[0]!r}/{style[1]!r}"


def _expected_pair_keys() -> str:
    return " or ".join(_keys(style) for style in PAIR_KEY_STYLES)


def _json_type(value: Any) -> str:
    """JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "list"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__
