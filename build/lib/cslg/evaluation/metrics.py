"""OCR metrics: pure functions of the OCR output and the expected text, and bootstrap CIs.

Every metric takes ``(ocr, expected)`` strings and returns a float in [0, 1], higher is
better. ``score`` joins several expected strings with spaces, as the paper's eval.py did.

The metrics of the text-rendering literature (each function's docstring gives the definition
and where it deviates):

- CSLG (upstream eval.py): ``ocr_similarity``, the ``difflib.SequenceMatcher`` ratio.
- MARIO-Eval (TextDiffuser, Chen et al., NeurIPS 2023; ``get_p_r_acc`` in its ocr_eval.py):
  ``word_precision``, ``word_recall``, ``sentence_accuracy`` per image, averaged over images,
  and the F-measure of the averaged precision and recall (``bootstrap_f_measure``: the
  summary's ``word_f_measure``).
- GlyphControl (Yang et al., NeurIPS 2023; ocr_acc.py): exact-match accuracy ``exact_match_cased``
  (Acc) and its case-insensitive version ``exact_match`` (Â). Its third number, the mean
  Levenshtein distance LD, is no [0, 1] score and no column here (``levenshtein`` computes it).
- AnyText (Tuo et al., ICLR 2024; ``get_ld`` in eval/eval_dgocr.py): ``ned``, 1 - normalised
  edit distance.

Agreement between OCR engines on one image: ``text_agreement``, ``verdict_agreement``.
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from itertools import combinations
from typing import Callable, Sequence

import numpy as np

from ..text import normalize_text

APOSTROPHES = "'’"


def ocr_similarity(ocr: str, expected: str) -> float:
    """The CSLG paper's metric (upstream eval.py): ``difflib.SequenceMatcher(None, ocr.lower(),
    expected.lower()).ratio()``, i.e. 2·M / (len(ocr) + len(expected)) with M the characters in
    matching blocks (difflib's autojunk heuristic included, as upstream)."""
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
    """AnyText's NED (Tuo et al., ICLR 2024, ``get_ld`` in eval/eval_dgocr.py): the normalised
    edit similarity ``1 - levenshtein(a, b) / max(len(a), len(b))``; 1.0 when both are empty.

    AnyText computes it per text line (the recogniser reads a crop at the line's known position)
    with case, and adds 1e-5 to the denominator; here it compares the whole image's OCR text with
    the joined expected text, lowercased like ``ocr_similarity``, without the 1e-5."""
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
    """MARIO-Eval's precision (TextDiffuser, Chen et al., NeurIPS 2023, ``get_p_r_acc`` in
    ocr_eval.py): matched words / OCR words, matching the word multisets case-insensitively;
    1.0 when both have no words, 0.0 when only the OCR has none.

    MARIO-Eval takes one OCR word per detected box and splits the expected text at spaces,
    punctuation kept; here both sides are split by ``words`` (punctuation dropped)."""
    matched, n_ocr, n_expected = _word_counts(ocr, expected)
    if n_ocr == 0:
        return float(n_expected == 0)
    return matched / n_ocr


def word_recall(ocr: str, expected: str) -> float:
    """MARIO-Eval's recall (see ``word_precision``): matched words / expected words (word
    multisets, case-insensitive); 1.0 when both have no words, 0.0 when only the expected text
    has none."""
    matched, n_ocr, n_expected = _word_counts(ocr, expected)
    if n_expected == 0:
        return float(n_ocr == 0)
    return matched / n_expected


def word_f1(ocr: str, expected: str) -> float:
    """This image's ``f_measure`` of its word precision and recall. Its mean over images is not
    MARIO-Eval's F-measure, which is ``f_measure`` of the mean precision and mean recall (the
    summary's ``word_f_measure``)."""
    return f_measure(word_precision(ocr, expected), word_recall(ocr, expected))


def f_measure(precision: float, recall: float) -> float:
    """Harmonic mean 2·P·R / (P + R); 0.0 when both are 0 (MARIO-Eval adds 1e-8 to the denominator)."""
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def sentence_accuracy(ocr: str, expected: str) -> float:
    """MARIO-Eval's accuracy (see ``word_precision``): 1.0 when the OCR words are exactly the
    expected words, as multisets in any order and case-insensitive (nothing missing, nothing
    extra), else 0.0. MARIO-Eval compares the sorted words concatenated without separators.

    AnyText's sentence accuracy is the per-line, cased counterpart (exact string equality of a
    line's recognised text with its expected text)."""
    return float(Counter(words(ocr)) == Counter(words(expected)))


def exact_match(ocr: str, expected: str) -> float:
    """GlyphControl's case-insensitive exact-match accuracy Â (Yang et al., NeurIPS 2023,
    ``OCR_EM_without_capitalization_Counter`` in ocr_acc.py): 1.0 when the expected text was
    read, else 0.0; other text in the image does not count against it.

    GlyphControl's texts are single words and it asks for the lowercased word to equal one
    detected box's lowercased text; here, for texts of any length and engines that return one
    string, every expected word must occur among the OCR words (multisets, any order)."""
    return _all_words_found(ocr, expected, cased=False)


def exact_match_cased(ocr: str, expected: str) -> float:
    """GlyphControl's exact-match accuracy Acc (``OCR_EM_Counter``): ``exact_match`` with
    case-sensitive words."""
    return _all_words_found(ocr, expected, cased=True)


def _all_words_found(ocr: str, expected: str, cased: bool) -> float:
    missing = Counter(words(expected, cased)) - Counter(words(ocr, cased))
    return float(not missing)


# Metric name -> function, in the column order of the output tables.
OCR_METRICS: dict[str, Callable[[str, str], float]] = {
    "ocr_similarity": ocr_similarity,
    "ned": ned,
    "word_precision": word_precision,
    "word_recall": word_recall,
    "word_f1": word_f1,
    "sentence_accuracy": sentence_accuracy,
    "exact_match": exact_match,
    "exact_match_cased": exact_match_cased,
}


def score(ocr_text: str, expected: Sequence[str]) -> dict[str, float]:
    """Every metric of ``OCR_METRICS`` for one image; the expected strings are joined by spaces."""
    target = " ".join(expected)
    return {name: metric(ocr_text, target) for name, metric in OCR_METRICS.items()}


def text_agreement(texts: Sequence[str]) -> float:
    """How alike several engines' OCR texts of one image are: the mean ``ocr_similarity`` over
    all pairs of texts (for two engines, their SequenceMatcher ratio); 1.0 for fewer than two."""
    pairs = list(combinations(texts, 2))
    return float(np.mean([ocr_similarity(a, b) for a, b in pairs])) if pairs else 1.0


def verdict_agreement(verdicts: Sequence[float]) -> float:
    """1.0 when every engine gave the same verdict (e.g. ``exact_match``) on one image, else 0.0."""
    return float(len(set(verdicts)) <= 1)


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


def bootstrap_f_measure(
    precision: Sequence[float], recall: Sequence[float], n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float, float]:
    """MARIO-Eval's F-measure of a set of images, ``f_measure(mean precision, mean recall)``, and
    its bootstrap CI: the ``alpha/2`` and ``1 - alpha/2`` quantiles over ``n`` resamples of the
    images (each resample keeps an image's precision and recall together).

    No images gives NaNs; ``n == 0`` gives NaN bounds."""
    p, r = np.asarray(precision, dtype=float), np.asarray(recall, dtype=float)
    if p.shape != r.shape:
        raise ValueError(f"precision and recall differ in length ({p.size} and {r.size})")
    if p.size == 0:
        return float("nan"), float("nan"), float("nan")
    value = f_measure(float(p.mean()), float(r.mean()))
    if n == 0:
        return value, float("nan"), float("nan")
    index = np.random.default_rng(seed).integers(0, p.size, size=(n, p.size))
    mp, mr = p[index].mean(axis=1), r[index].mean(axis=1)
    total = mp + mr
    f = np.divide(2 * mp * mr, total, out=np.zeros_like(total), where=total > 0)
    lo, hi = np.quantile(f, [alpha / 2, 1 - alpha / 2])
    return value, float(lo), float(hi)
