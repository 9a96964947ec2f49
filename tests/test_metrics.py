"""Metrics against hand-computed cases, explicit formulas and sklearn."""

from __future__ import annotations

import math
from itertools import combinations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from fine_cli import metrics

# Agreement with sklearn / explicit loops: both compute the same sums in another order.
TOL = 1e-12
GRID = [float(p) for p in range(0, 101, 5)]


# ---- top_k / recall_at ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("p", "n", "k"),
    [
        (0, 10, 0),
        (100, 10, 10),
        (10, 10, 1),
        (15, 10, 2),
        (1, 10, 1),
        (7, 100, 7),
        (33.3, 3, 1),
        (50, 0, 0),
        (0.001, 5, 1),
    ],
)
def test_top_k_rounds_up(p: float, n: int, k: int) -> None:
    assert metrics.top_k(p, n) == k


@pytest.mark.parametrize("p", [-1.0, 100.5, float("nan")])
def test_top_k_rejects_bad_p(p: float) -> None:
    with pytest.raises(ValueError, match="p must be"):
        metrics.top_k(p, 10)


def test_recall_at_hand_case() -> None:
    # n = 10, positives at ranks 1, 4, 9 (1-based).
    mask = np.array([1, 0, 0, 1, 0, 0, 0, 0, 1, 0], dtype=bool)
    got = metrics.recall_at(mask, [0, 10, 30, 40, 85, 90, 100])
    want = [0, 1 / 3, 1 / 3, 2 / 3, 1.0, 1.0, 1.0]  # k = 0, 1, 3, 4, 9, 9, 10
    np.testing.assert_allclose(got, want, atol=TOL)


def test_recall_at_perfect_and_reversed() -> None:
    n, f = 100, 20
    perfect = np.zeros(n, dtype=bool)
    perfect[:f] = True
    rec = metrics.recall_at(perfect, GRID)
    np.testing.assert_allclose(rec, [min(p / 20, 1.0) for p in GRID], atol=TOL)
    assert rec[0] == 0.0 and rec[-1] == 1.0
    rev = metrics.recall_at(perfect[::-1], GRID)
    np.testing.assert_allclose(rev, [max(0.0, (p - 80) / 20) for p in GRID], atol=TOL)
    np.testing.assert_allclose(metrics.ideal_recall(n, f, GRID), rec, atol=TOL)


def test_recall_at_accepts_0_1_and_no_positive_is_nan() -> None:
    np.testing.assert_allclose(metrics.recall_at(np.array([0, 1]), [50, 100]), [0.0, 1.0])
    assert np.all(np.isnan(metrics.recall_at(np.zeros(4, dtype=bool), [0, 50])))
    with pytest.raises(ValueError, match="boolean"):
        metrics.recall_at(np.array([0, 2]), [50])
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        metrics.recall_at(np.array([True]), [150])
    with pytest.raises(ValueError, match="non-empty"):
        metrics.recall_at(np.array([True]), [])


# ---- area under the recall curve -----------------------------------------------------


def test_area_of_diagonal_and_ideal() -> None:
    assert metrics.recall_curve_area(GRID, [p / 100 for p in GRID]) == pytest.approx(0.5)
    # Ideal with 20% positives: 1 - 0.2 / 2 (the grid hits the kink at p = 20).
    assert metrics.ideal_recall_area(100, 20, GRID) == pytest.approx(0.9)
    assert metrics.ideal_recall_area(1000, 1000, GRID) == pytest.approx(0.5)


def test_area_hand_case_partial_unsorted_grid() -> None:
    # Grid 20..60 given out of order; trapezoids 0.2*(0.1+0.5)/2 + 0.2*(0.5+0.7)/2 = 0.18,
    # divided by the span 0.4.
    assert metrics.recall_curve_area([60, 20, 40], [0.7, 0.1, 0.5]) == pytest.approx(0.45)
    assert metrics.recall_curve_area([30, 30], [0.2, 0.4]) == pytest.approx(0.3)
    with pytest.raises(ValueError, match="shape"):
        metrics.recall_curve_area([0, 100], [0.5])


# ---- AUROC / AUPRC -------------------------------------------------------------------


def _pairwise_auroc(s: np.ndarray, y: np.ndarray) -> float:
    """The definition, as a double loop: P(pos > neg) + P(pos == neg) / 2."""
    pos, neg = s[y], s[~y]
    total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in pos for b in neg)
    return total / (len(pos) * len(neg))


def test_auroc_auprc_hand_case() -> None:
    s = np.array([0.9, 0.8, 0.8, 0.3, 0.1])
    y = np.array([True, False, True, False, False])
    # Pairs (pos, neg): 0.9 beats all 3; 0.8 ties one 0.8 and beats two -> 5.5 / 6.
    assert metrics.auroc(s, y) == pytest.approx(5.5 / 6)
    # Thresholds 0.9: P=1, R=1/2; 0.8: P=2/3, R=1 -> AP = 1/2 * 1 + 1/2 * 2/3.
    assert metrics.auprc(s, y) == pytest.approx(0.5 + 1 / 3)
    assert metrics.auroc(-s, y) == pytest.approx(0.5 / 6)


def test_average_ranks_ties() -> None:
    np.testing.assert_allclose(metrics.average_ranks(np.array([3, 1, 3, 2, 3])), [4, 1, 4, 2, 4])


@pytest.mark.parametrize("seed", range(5))
def test_auroc_auprc_match_sklearn_with_ties(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 300
    y = rng.random(n) < 0.25
    # Integers in a small range: many ties, some of them across classes.
    s = rng.integers(0, 12, size=n).astype(np.float64) + 2.0 * y
    assert metrics.auroc(s, y) == pytest.approx(roc_auc_score(y, s), abs=TOL)
    assert metrics.auroc(s, y) == pytest.approx(_pairwise_auroc(s, y), abs=TOL)
    assert metrics.auprc(s, y) == pytest.approx(average_precision_score(y, s), abs=TOL)
    c = rng.normal(size=n)  # continuous scores, no ties
    assert metrics.auroc(c, y) == pytest.approx(roc_auc_score(y, c), abs=TOL)
    assert metrics.auprc(c, y) == pytest.approx(average_precision_score(y, c), abs=TOL)


def test_auroc_auprc_degenerate_is_nan() -> None:
    s = np.array([0.3, 0.2, 0.1])
    for y in (np.zeros(3, dtype=bool), np.ones(3, dtype=bool)):
        assert math.isnan(metrics.auroc(s, y))
        assert math.isnan(metrics.auprc(s, y))


def test_auroc_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="NaN"):
        metrics.auroc(np.array([0.1, np.nan]), np.array([True, False]))
    with pytest.raises(ValueError, match="shape"):
        metrics.auprc(np.array([0.1, 0.2, 0.3]), np.array([True, False]))


# ---- consistency across runs ---------------------------------------------------------


def test_jaccard_hand_case() -> None:
    a = np.array([1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    b = np.array([2, 1, 5, 3, 4, 6, 7, 8, 9, 10])
    c = np.array([10, 9, 8, 7, 6, 5, 4, 3, 2, 1])
    # Top 30% = 3 ids: {1,2,3}, {2,1,5}, {10,9,8}. J(a,b) = 2/4, J(a,c) = J(b,c) = 0.
    assert metrics.jaccard_consistency([a, b, c], 30) == pytest.approx(0.5 / 3)
    assert metrics.jaccard_consistency([a, b], 30) == pytest.approx(0.5)
    assert metrics.jaccard_consistency([a, c], 100) == pytest.approx(1.0)
    assert math.isnan(metrics.jaccard_consistency([a, b], 0))
    with pytest.raises(ValueError, match="at least 2"):
        metrics.jaccard_consistency([a], 30)


def test_jaccard_matches_explicit_mean() -> None:
    rng = np.random.default_rng(0)
    runs = [rng.permutation(50) for _ in range(4)]
    tops = [set(r[:10].tolist()) for r in runs]  # 20% of 50
    want = np.mean([len(x & y) / len(x | y) for x, y in combinations(tops, 2)])
    assert metrics.jaccard_consistency(runs, 20) == pytest.approx(want, abs=TOL)


def test_coefficient_of_variation_hand_case() -> None:
    scores = np.array(
        [
            [1.0, 2.0, 5.0, 0.0, -4.0],
            [3.0, 2.0, 5.0, 0.0, -2.0],
        ]
    )
    # Point 0: mean 2, std 1 -> 0.5. Point 1: constant -> 0. Point 4: mean -3, std 1 -> 1/3.
    got = metrics.coefficient_of_variation(scores, np.array([0, 1, 4]))
    assert got == pytest.approx((0.5 + 0.0 + 1 / 3) / 3)
    # Constant zero scores count 0; zero mean with spread counts inf.
    assert metrics.coefficient_of_variation(scores, np.array([3])) == 0.0
    spread = np.array([[1.0], [-1.0]])
    assert metrics.coefficient_of_variation(spread, np.array([0])) == math.inf
    assert math.isnan(metrics.coefficient_of_variation(scores, np.array([], dtype=np.int64)))
    with pytest.raises(ValueError, match="ids must lie"):
        metrics.coefficient_of_variation(scores, np.array([5]))
    with pytest.raises(ValueError, match="runs >= 2"):
        metrics.coefficient_of_variation(scores[:1], np.array([0]))


def test_coefficient_of_variation_matches_loop() -> None:
    rng = np.random.default_rng(1)
    scores = rng.normal(loc=3.0, size=(5, 40))
    top = np.array([3, 17, 0, 39])
    want = np.mean([np.std(scores[:, i]) / abs(np.mean(scores[:, i])) for i in top])
    assert metrics.coefficient_of_variation(scores, top) == pytest.approx(want, abs=TOL)
