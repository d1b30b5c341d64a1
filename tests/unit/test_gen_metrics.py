import math

import pytest

from tunelab.lm.metrics import exact_match, generation_metrics, normalize_answer, rouge_l, token_f1


def test_normalisation_ignores_case_punctuation_and_articles():
    assert normalize_answer("The  Capital, of France!") == "capital of france"
    assert exact_match("Paris.", "paris") == 1.0
    assert exact_match("Paris is it", "Paris") == 0.0


def test_token_f1_partial_overlap():
    # pred tokens: paris is capital (3), ref: capital is paris france (4) -> common 3: P=1, R=.75
    assert token_f1("Paris is the capital", "capital is Paris, France") == pytest.approx(2 * 1 * 0.75 / 1.75)
    assert token_f1("", "") == 1.0
    assert token_f1("x", "") == 0.0
    assert token_f1("dog", "cat") == 0.0


def test_rouge_l_uses_longest_common_subsequence_with_stemming():
    assert rouge_l("the cat sat on the mat", "the cat sat on the mat") == pytest.approx(1.0)
    # stemming: "running" ~ "run"
    assert rouge_l("he runs", "he running") == pytest.approx(1.0)
    assert 0.0 < rouge_l("a cat on a mat", "the cat sat on the mat") < 1.0


def test_generation_metrics_means_and_n():
    m = generation_metrics(["Paris", "Berlin is big"], ["paris.", "Rome"])
    assert m["n"] == 2
    assert m["exact_match"] == pytest.approx(0.5)
    assert m["token_f1"] == pytest.approx(0.5)
    empty = generation_metrics([], [])
    assert empty["n"] == 0 and math.isnan(empty["rouge_l"])
    with pytest.raises(ValueError):
        generation_metrics(["a"], [])
