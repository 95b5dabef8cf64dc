"""ANLS, exact match and their aggregation on hand-made cases."""

import numpy as np
import pytest

from pg_jax.evaluators import anls as m


@pytest.mark.parametrize(
    "a, b, d",
    [
        ("", "", 0),
        ("abc", "", 3),
        ("kitten", "sitting", 3),
        ("flaw", "lawn", 2),
        ("ab", "ba", 2),
    ],
)
def test_levenshtein(a, b, d):
    assert m.levenshtein(a, b) == d == m.levenshtein(b, a)


def test_exact_and_disjoint():
    assert m.anls("42", ["42"]) == 1.0
    assert m.anls("xyz", ["42"]) == 0.0


def test_threshold_edge_exactly_half_scores_zero():
    # NL = 2/4 = 0.5 exactly: not < 0.5, so 0 (not 0.5).
    assert m.anls("ab", ["abcd"]) == 0.0
    # NL = 1/4 = 0.25 -> 0.75; NL = 3/7 < 0.5 -> 4/7.
    assert m.anls("abc", ["abcd"]) == pytest.approx(0.75)
    assert m.anls("abcd", ["abcdefg"]) == pytest.approx(4 / 7)
    # A custom threshold moves the edge.
    assert m.anls("ab", ["abcd"], threshold=0.6) == pytest.approx(0.5)


def test_case_and_whitespace_rrc_vs_big_vision():
    # RRC: strip, lower-case, collapse inner whitespace on both sides.
    assert m.anls("  The   TOTAL\n", ["the total"]) == 1.0
    assert m.anls("the total", ["  The  Total "]) == 1.0
    # big_vision: lower-case only; whitespace is part of the string.
    assert m.anls("The TOTAL", ["the total"], variant="big_vision") == 1.0
    # "the  total " vs "the total": distance 2 over 11 characters.
    assert m.anls("the  total ", ["the total"], variant="big_vision") == pytest.approx(1 - 2 / 11)


def test_several_ground_truths_take_the_max():
    answers = ["$1,234.00", "1234", "1,234"]
    assert m.anls("1234", answers) == 1.0
    assert m.anls("1,235", answers) == pytest.approx(0.8)  # best: "1,234", distance 1 of 5
    assert m.anls("$1,234.0", answers) == pytest.approx(8 / 9)


def test_empty_prediction_and_empty_ground_truth():
    assert m.anls("", ["42"]) == 0.0
    assert m.anls("   ", ["42"]) == 0.0
    # big_vision: empty ground truth scores pred == "".
    assert m.anls("", [""], variant="big_vision") == 1.0
    assert m.anls("x", [""], variant="big_vision") == 0.0
    assert m.anls(" ", [""], variant="big_vision") == 0.0  # not stripped
    assert m.anls(" ", [""], variant="rrc") == 1.0  # stripped to ""
    with pytest.raises(ValueError, match="at least one"):
        m.anls("x", [])
    with pytest.raises(ValueError, match="unknown ANLS variant"):
        m.anls("x", ["x"], variant="vqa")


def test_exact_match():
    assert m.exact_match(" The Total", ["the total", "x"]) == 1.0
    assert m.exact_match("the totals", ["the total"]) == 0.0


def test_mean_and_totals_per_type_and_sum_of_parts():
    preds = ["42", "ab", "A12", ""]
    gts = [["42"], ["abcd"], ["a12", "b"], ["x"]]
    types = [["form"], ["form", "layout"], ["layout"], []]
    assert m.mean_anls(preds, gts) == pytest.approx(0.5)
    t = m.Totals()
    for p, g, ty in zip(preds, gts, types):
        t.add(p, g, ty)
    out = t.metrics()
    assert out["anls"] == pytest.approx(0.5) and out["num"] == 4
    assert out["exact_match"] == pytest.approx(0.5)
    assert out["anls/form"] == pytest.approx(0.5) and out["anls/layout"] == pytest.approx(0.5)
    # Host-style reduction: sums of two halves equal the whole.
    a, b = m.Totals(), m.Totals()
    for i, (p, g, ty) in enumerate(zip(preds, gts, types)):
        (a if i % 2 else b).add(p, g, ty)
    names = ["form", "layout", "unused"]
    summed = m.Totals.from_array(a.as_array(names) + b.as_array(names), names)
    assert summed.metrics() == pytest.approx(out)
    assert np.allclose(summed.as_array(names), t.as_array(names))
