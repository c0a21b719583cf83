import math

import pytest

from cslg.evaluation.metrics import (
    OCR_METRICS,
    bootstrap_ci,
    bootstrap_f_measure,
    exact_match,
    exact_match_cased,
    f_measure,
    levenshtein,
    ned,
    ocr_similarity,
    score,
    sentence_accuracy,
    text_agreement,
    verdict_agreement,
    word_f1,
    word_precision,
    word_recall,
    words,
)


def test_ocr_similarity_is_difflib_ratio_lowercased():
    assert ocr_similarity("HELLX", "hello") == pytest.approx(2 * 4 / 10)
    assert ocr_similarity("abcd", "BCDE") == pytest.approx(2 * 3 / 8)
    assert ocr_similarity("", "HELLO") == 0.0
    assert ocr_similarity("Hello", "HELLO") == 1.0


@pytest.mark.parametrize(
    "a, b, distance", [("kitten", "sitting", 3), ("flaw", "lawn", 2), ("", "abc", 3), ("abc", "abc", 0)]
)
def test_levenshtein(a, b, distance):
    assert levenshtein(a, b) == distance
    assert levenshtein(b, a) == distance


def test_ned():
    # AnyText: 1 - edit distance / longer length
    assert ned("kitten", "sitting") == pytest.approx(1 - 3 / 7)
    assert ned("OPEN 24", "OPEN") == pytest.approx(1 - 3 / 7)  # three insertions
    assert ned("HELLO", "hello") == 1.0
    assert ned("", "") == 1.0
    assert ned("abc", "") == 0.0


def test_words_drop_apostrophes_and_split_on_punctuation():
    assert words("SWEET TOOTH'S, est.1887!") == ["sweet", "tooths", "est", "1887"]
    assert words("Hello World", cased=True) == ["Hello", "World"]


def test_word_precision_recall_f1_on_multisets():
    ocr, expected = "the big STOP sign stop", "stop sign"
    assert word_precision(ocr, expected) == pytest.approx(2 / 5)
    assert word_recall(ocr, expected) == 1.0
    assert word_f1(ocr, expected) == pytest.approx(2 * 0.4 * 1.0 / 1.4)
    assert word_recall("GO", "GO GO") == 0.5


def test_mario_eval_by_hand():
    # OCR words {open, opem, today}, expected {open, today, late}: 2 matched of 3 read, 2 of 3 expected.
    ocr, expected = "OPEN opem today", "open today late"
    assert word_precision(ocr, expected) == pytest.approx(2 / 3)
    assert word_recall(ocr, expected) == pytest.approx(2 / 3)
    assert word_f1(ocr, expected) == pytest.approx(2 / 3)
    assert sentence_accuracy(ocr, expected) == 0.0
    # A duplicated word is matched once: P = 1/2, R = 1, F = 2·(1/2)·1 / (3/2) = 2/3.
    assert word_precision("SALE SALE", "sale") == 0.5
    assert word_f1("SALE SALE", "sale") == pytest.approx(2 / 3)
    # ... and matched twice when it is expected twice: P = R = 2/2, or 2/3 and 2/2 with one more read.
    assert word_precision("GO GO", "go go") == word_recall("GO GO", "go go") == 1.0
    assert word_precision("GO GO GO", "go go") == pytest.approx(2 / 3)


def test_f_measure():
    assert f_measure(0.5, 1.0) == pytest.approx(2 / 3)
    assert f_measure(0.75, 0.75) == 0.75
    assert f_measure(0.0, 0.0) == 0.0


def test_sentence_accuracy_wants_exactly_the_expected_words():
    assert sentence_accuracy("world HELLO", "HELLO WORLD") == 1.0  # any order, any case
    assert sentence_accuracy("SWEET TOOTHS", "SWEET TOOTH'S") == 1.0
    assert sentence_accuracy("HELLO WORLD again", "HELLO WORLD") == 0.0  # an extra word
    assert sentence_accuracy("HELLO", "HELLO WORLD") == 0.0  # a missing word
    assert sentence_accuracy("GO GO", "GO") == 0.0  # a multiset: one GO too many


def test_word_metrics_with_empty_sides():
    assert word_precision("", "") == word_recall("", "") == word_f1("", "") == 1.0
    assert word_precision("", "HELLO") == word_recall("", "HELLO") == word_f1("", "HELLO") == 0.0
    assert word_recall("HELLO", "") == 0.0


def test_exact_match_is_order_free_and_case_insensitive():
    # GlyphControl: the expected text was read; other text in the image does not count against it.
    assert exact_match("a big HELLO", "hello") == 1.0
    assert exact_match("HELLX", "hello") == 0.0
    assert exact_match_cased("a big HELLO", "HELLO") == 1.0
    assert exact_match_cased("a big Hello", "HELLO") == 0.0
    assert exact_match("WORLD hello", "HELLO WORLD") == 1.0
    assert exact_match("SWEET TOOTHS", "SWEET TOOTH'S") == 1.0
    assert exact_match("HELLO", "HELLO WORLD") == 0.0
    assert exact_match("GO", "GO GO") == 0.0
    assert exact_match_cased("Hello World", "HELLO World") == 0.0
    assert exact_match_cased("a HELLO World b", "HELLO World") == 1.0


def test_score_joins_expected_strings_and_has_every_metric():
    scores = score("HELLO WORLD", ["HELLO", "WORLD"])
    assert list(scores) == list(OCR_METRICS)
    assert all(value == 1.0 for value in scores.values())
    assert score("HELLX", ["HELLO"])["ocr_similarity"] == pytest.approx(0.8)


def test_bootstrap_ci():
    values = [0.0, 1.0] * 50
    mean, lo, hi = bootstrap_ci(values, n=2000, seed=1)
    assert mean == 0.5
    assert lo < 0.5 < hi
    assert hi - lo == pytest.approx(2 * 1.96 * 0.05, abs=0.03)  # normal approx: sd of mean = 0.5/sqrt(100)
    assert bootstrap_ci(values, n=2000, seed=1) == (mean, lo, hi)
    narrow = bootstrap_ci(values, n=2000, seed=1, alpha=0.5)
    assert lo < narrow[1] < narrow[2] < hi


def test_bootstrap_f_measure():
    # Per image (P, R) = (1/2, 1) and (1, 1/2): F of the means (3/4, 3/4) is 3/4, not the mean F1 2/3.
    value, lo, hi = bootstrap_f_measure([0.5, 1.0], [1.0, 0.5], n=500, seed=0)
    assert value == 0.75
    assert 0.5 <= lo <= value <= hi <= 0.75  # a resample of one image twice has F = 2/3; mixed ones 3/4
    assert lo == pytest.approx(2 / 3)
    assert bootstrap_f_measure([1.0, 1.0], [0.0, 0.0], n=50) == (0.0, 0.0, 0.0)


def test_bootstrap_f_measure_resamples_images_not_values():
    # With P = R per image, F of a resample is its mean P, so the CI is bootstrap_ci's (same draws).
    values = [1.0, 0.0, 1.0, 1.0, 0.5]
    assert bootstrap_f_measure(values, values, n=300, seed=3) == pytest.approx(bootstrap_ci(values, n=300, seed=3))


def test_bootstrap_f_measure_edge_cases():
    assert all(math.isnan(v) for v in bootstrap_f_measure([], []))
    value, lo, hi = bootstrap_f_measure([0.5], [1.0], n=0)
    assert value == pytest.approx(2 / 3) and math.isnan(lo) and math.isnan(hi)
    with pytest.raises(ValueError, match="differ in length"):
        bootstrap_f_measure([0.5, 1.0], [1.0])


def test_engine_agreement():
    assert text_agreement(["HELLO", "hellx"]) == pytest.approx(0.8)  # SequenceMatcher 2·4/10, lowercased
    # three engines: the mean over the three pairs (abcd~abcd 1, abcd~bcde 2·3/8 twice)
    assert text_agreement(["abcd", "ABCD", "bcde"]) == pytest.approx((1 + 0.75 + 0.75) / 3)
    assert text_agreement(["only one"]) == 1.0
    assert verdict_agreement([1.0, 1.0]) == verdict_agreement([0.0, 0.0]) == 1.0
    assert verdict_agreement([1.0, 0.0]) == 0.0
    assert verdict_agreement([1.0, 1.0, 0.0]) == 0.0


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.7, 0.7, 0.7], n=100) == pytest.approx((0.7, 0.7, 0.7))
    assert all(math.isnan(v) for v in bootstrap_ci([], n=100))
    mean, lo, hi = bootstrap_ci([0.2, 0.4], n=0)
    assert mean == pytest.approx(0.3) and math.isnan(lo) and math.isnan(hi)
