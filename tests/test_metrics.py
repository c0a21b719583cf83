import math

import pytest

from cslg.metrics import (
    METRICS,
    bootstrap_ci,
    exact_match,
    exact_match_cased,
    levenshtein,
    ned,
    ocr_similarity,
    score,
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
    assert ned("kitten", "sitting") == pytest.approx(1 - 3 / 7)
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


def test_word_metrics_with_empty_sides():
    assert word_precision("", "") == word_recall("", "") == word_f1("", "") == 1.0
    assert word_precision("", "HELLO") == word_recall("", "HELLO") == word_f1("", "HELLO") == 0.0
    assert word_recall("HELLO", "") == 0.0


def test_exact_match_is_order_free_and_case_insensitive():
    assert exact_match("WORLD hello", "HELLO WORLD") == 1.0
    assert exact_match("SWEET TOOTHS", "SWEET TOOTH'S") == 1.0
    assert exact_match("HELLO", "HELLO WORLD") == 0.0
    assert exact_match("GO", "GO GO") == 0.0
    assert exact_match_cased("Hello World", "HELLO World") == 0.0
    assert exact_match_cased("a HELLO World b", "HELLO World") == 1.0


def test_score_joins_expected_strings_and_has_every_metric():
    scores = score("HELLO WORLD", ["HELLO", "WORLD"])
    assert list(scores) == list(METRICS)
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


def test_bootstrap_ci_edge_cases():
    assert bootstrap_ci([0.7, 0.7, 0.7], n=100) == pytest.approx((0.7, 0.7, 0.7))
    assert all(math.isnan(v) for v in bootstrap_ci([], n=100))
    mean, lo, hi = bootstrap_ci([0.2, 0.4], n=0)
    assert mean == pytest.approx(0.3) and math.isnan(lo) and math.isnan(hi)
