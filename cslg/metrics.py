"""OCR metrics: pure functions of the OCR output and the expected text, and a bootstrap CI.

Every metric takes ``(ocr, expected)`` strings and returns a float in [0, 1], higher is
better. ``score`` joins several expected strings with spaces, as the paper's eval.py did.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from typing import Callable, Sequence

import numpy as np

from .text import normalize_text

APOSTROPHES = "'’"


def ocr_similarity(ocr: str, expected: str) -> float:
    """The paper's metric: ``difflib.SequenceMatcher(None, ocr.lower(), expected.lower()).ratio()``,
    i.e. 2·M / (len(ocr) + len(expected)) with M the characters in matching blocks."""
    return difflib.SequenceMatcher(None, ocr.lower(), expected.lower()).ratio()


def levenshtein(a: str, b: str) -> int:
    """Edit distance: the fewest single-character insertions, deletions and substitutions turning a into b."""
    if len(a) < len(b):
        a, b = b, a
    previous = list(range(len(b) + 1))
    for i, char_a in enumerate(a, start=1):
        current = [i]
        for j, char_b in enumerate(b, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (char_a != char_b)))
        previous = current
    return previous[-1]


def ned(ocr: str, expected: str) -> float:
    """Normalised edit similarity ``1 - levenshtein(a, b) / max(len(a), len(b))`` on lowercased
    strings; 1.0 when both are empty."""
    a, b = ocr.lower(), expected.lower()
    if not a and not b:
        return 1.0
    return 1.0 - levenshtein(a, b) / max(len(a), len(b))


def words(text: str, cased: bool = False) -> list[str]:
    """The words of ``text``: NFKC, apostrophes dropped (``TOOTH'S`` -> ``TOOTHS``), split at every
    other non-alphanumeric character, lowercased unless ``cased``."""
    text = normalize_text(text)
    for apostrophe in APOSTROPHES:
        text = text.replace(apostrophe, "")
    tokens = re.findall(r"[^\W_]+", text)
    return tokens if cased else [t.lower() for t in tokens]


def _word_counts(ocr: str, expected: str) -> tuple[int, int, int]:
    """(matched, OCR, expected) word counts, matching word multisets case-insensitively."""
    ocr_words, expected_words = Counter(words(ocr)), Counter(words(expected))
    matched = sum((ocr_words & expected_words).values())
    return matched, sum(ocr_words.values()), sum(expected_words.values())


def word_precision(ocr: str, expected: str) -> float:
    """Matched words / OCR words (word multisets, case-insensitive); 1.0 when both have no words,
    0.0 when only the OCR has none."""
    matched, n_ocr, n_expected = _word_counts(ocr, expected)
    if n_ocr == 0:
        return float(n_expected == 0)
    return matched / n_ocr


def word_recall(ocr: str, expected: str) -> float:
    """Matched words / expected words (word multisets, case-insensitive); 1.0 when both have no
    words, 0.0 when only the expected text has none."""
    matched, n_ocr, n_expected = _word_counts(ocr, expected)
    if n_expected == 0:
        return float(n_ocr == 0)
    return matched / n_expected


def word_f1(ocr: str, expected: str) -> float:
    """Harmonic mean 2·P·R / (P + R) of word precision and recall; 0.0 when both are 0."""
    p, r = word_precision(ocr, expected), word_recall(ocr, expected)
    return 2 * p * r / (p + r) if p + r else 0.0


def exact_match(ocr: str, expected: str) -> float:
    """1.0 when every expected word occurs among the OCR words (as a multiset, in any order,
    case-insensitive), else 0.0."""
    return _all_words_found(ocr, expected, cased=False)


def exact_match_cased(ocr: str, expected: str) -> float:
    """``exact_match`` with case-sensitive words."""
    return _all_words_found(ocr, expected, cased=True)


def _all_words_found(ocr: str, expected: str, cased: bool) -> float:
    missing = Counter(words(expected, cased)) - Counter(words(ocr, cased))
    return float(not missing)


# Metric name -> function, in the column order of the output tables.
METRICS: dict[str, Callable[[str, str], float]] = {
    "ocr_similarity": ocr_similarity,
    "ned": ned,
    "word_precision": word_precision,
    "word_recall": word_recall,
    "word_f1": word_f1,
    "exact_match": exact_match,
    "exact_match_cased": exact_match_cased,
}


def score(ocr_text: str, expected: Sequence[str]) -> dict[str, float]:
    """Every metric of ``METRICS`` for one image; the expected strings are joined by spaces."""
    target = " ".join(expected)
    return {name: metric(ocr_text, target) for name, metric in METRICS.items()}


def bootstrap_ci(
    values: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """``(mean, lo, hi)``: the mean and the ``alpha/2`` and ``1 - alpha/2`` quantiles of the means
    of ``n`` resamples (with replacement, ``numpy.random.default_rng(seed)``).

    No values gives NaNs; ``n == 0`` gives NaN bounds.
    """
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(x.mean())
    if n == 0:
        return mean, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(n, x.size))].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return mean, float(lo), float(hi)
