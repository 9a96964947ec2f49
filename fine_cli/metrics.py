"""Evaluation measures of a ranking: recall@p, AUROC/AUPRC, consistency across runs.

Pure numpy: arrays in, numbers out, no files and no printing. Input problems raise
``ValueError``; the stages turn them into one-sentence ``FineError`` messages.

Dimension names: ``n`` ranked points (or subsets), ``P`` entries of a p grid,
``runs`` repeated runs (seeds).

The top-p% of ``n`` ranked entries is the first ``k(p) = ceil(p * n / 100)`` of them,
with ``p * n / 100`` rounded to 9 decimals first so that floating-point noise (``7 * 100
/ 100`` computed as ``7.000000000000001``) never adds an entry. So ``k(0) = 0``,
``k(100) = n``, and any p > 0 selects at least one entry.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import combinations

import numpy as np

# A p grid or a curve over it: a list or a 1-D array.
Floats = Sequence[float] | np.ndarray

# Decimals kept of p * n / 100 before the ceiling (see the module docstring).
_K_DECIMALS = 9


def top_k(p: float, n: int) -> int:
    """Number of entries in the top-p% of ``n``: ``ceil(p * n / 100)``, in ``[0, n]``."""
    if not 0.0 <= p <= 100.0 or math.isnan(p):
        raise ValueError(f"p must be a percentage in [0, 100], got {p!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    return min(n, math.ceil(round(p * n / 100.0, _K_DECIMALS)))


def _grid(p_grid: Floats) -> np.ndarray:
    """The p grid as a float array ``(P,)``, checked to be non-empty percentages."""
    grid = np.asarray(p_grid, dtype=np.float64)
    if grid.ndim != 1 or grid.size == 0:
        raise ValueError(f"p_grid must be a non-empty list of percentages, got shape {grid.shape}")
    if not np.all((grid >= 0.0) & (grid <= 100.0)):
        raise ValueError(f"p_grid values must lie in [0, 100], got {grid.tolist()}")
    return grid


def _bool_vector(x: np.ndarray, name: str) -> np.ndarray:
    """A 1-D bool array; integer 0/1 input is accepted."""
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != np.bool_:
        if a.size and not np.all((a == 0) | (a == 1)):
            raise ValueError(f"{name} must be boolean (or 0/1), got values outside {{0, 1}}")
        a = a.astype(np.bool_)
    return a


def recall_at(is_flipped_ranked: np.ndarray, p_grid: Floats) -> np.ndarray:
    """Recall of the positives among the top-p% of a ranking, for each p in the grid.

    Args:
        is_flipped_ranked: ``(n,)`` bool, in rank order (most influential first): True
            where the entry is a positive (a flipped label).
        p_grid: ``(P,)`` percentages in [0, 100].

    Returns:
        ``(P,)`` float64: ``(#positives among the first k(p)) / (#positives)``; 0 at p=0
        and 1 at p=100. All NaN when there is no positive (recall is undefined).
    """
    mask = _bool_vector(is_flipped_ranked, "is_flipped_ranked")
    grid = _grid(p_grid)
    n = mask.size
    total = int(mask.sum())
    if total == 0:
        return np.full(grid.shape, np.nan)
    # found[k] = positives among the first k entries, k = 0..n.
    found = np.concatenate([[0], np.cumsum(mask)])
    ks = np.array([top_k(float(p), n) for p in grid], dtype=np.int64)
    return found[ks] / total


def ideal_recall(n: int, n_flipped: int, p_grid: Floats) -> np.ndarray:
    """Recall ``(P,)`` of the ideal ranking (all positives first): ``min(k(p), f) / f``."""
    if not 0 < n_flipped <= n:
        raise ValueError(f"need 0 < n_flipped <= n, got n_flipped={n_flipped}, n={n}")
    mask = np.zeros(n, dtype=np.bool_)
    mask[:n_flipped] = True
    return recall_at(mask, p_grid)


def recall_curve_area(p_grid: Floats, recalls: Floats) -> float:
    """Normalised area under the recall curve, in [0, 1].

    The trapezoid rule over ``x = p / 100`` (grid sorted by p), divided by the grid's
    span ``(max p - min p) / 100``: the mean height of the piecewise-linear curve. On the
    full grid 0..100 a random ranking gives about 0.5 and the ideal one, with a share
    ``r`` of positives, ``1 - r/2`` (see :func:`ideal_recall_area`). A grid of one
    distinct p has no span; the area is then the recall at that p.

    Args:
        p_grid: ``(P,)`` percentages in [0, 100], in any order.
        recalls: ``(P,)`` recall at each p, as from :func:`recall_at`.
    """
    grid = _grid(p_grid)
    rec = np.asarray(recalls, dtype=np.float64)
    if rec.shape != grid.shape:
        raise ValueError(f"recalls has shape {rec.shape}, p_grid has shape {grid.shape}")
    order = np.argsort(grid, kind="stable")
    x, y = grid[order] / 100.0, rec[order]
    span = float(x[-1] - x[0])
    if span == 0.0:
        return float(np.mean(y))
    area = float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2.0))
    return area / span


def ideal_recall_area(n: int, n_flipped: int, p_grid: Floats) -> float:
    """:func:`recall_curve_area` of the ideal ranking for the same ``n``, flip count and grid."""
    return recall_curve_area(p_grid, ideal_recall(n, n_flipped, p_grid))


def _scores_labels(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    y = _bool_vector(labels, "labels")
    if s.shape != y.shape:
        raise ValueError(f"scores has shape {s.shape}, labels has shape {y.shape}")
    if not np.all(np.isfinite(s)):
        raise ValueError("scores hold NaN or inf values")
    return s, y


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks ``(n,)`` of ``x`` ascending; tied values share their average rank."""
    x = np.asarray(x)
    n = x.size
    order = np.argsort(x, kind="stable")
    xs = x[order]
    starts = np.flatnonzero(np.concatenate([[True], xs[1:] != xs[:-1]]))
    ends = np.concatenate([starts[1:], [n]])  # exclusive
    # A tie block holds ranks starts+1 .. ends; their mean is (starts + 1 + ends) / 2.
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = np.repeat((starts + 1 + ends) / 2.0, ends - starts)
    return ranks


def auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (higher = more likely positive).

    The Mann-Whitney statistic from average ranks: the probability that a random
    positive outscores a random negative, ties counting one half. Equals sklearn's
    ``roc_auc_score``.

    Args:
        scores: ``(n,)`` finite floats.
        labels: ``(n,)`` bool (or 0/1), True = positive.

    Returns:
        AUROC in [0, 1]; NaN when the labels hold no positive or no negative, since no
        ordering can then be better or worse than another.
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    rank_sum = float(average_ranks(s)[y].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)


def auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Average precision of ``scores`` (higher = more likely positive).

    sklearn's ``average_precision_score``: ``sum_t (R_t - R_{t-1}) * P_t`` over the
    distinct score thresholds t taken from high to low, where ``P_t`` and ``R_t`` are the
    precision and recall of "score >= t"; tied scores enter together.

    Args:
        scores: ``(n,)`` finite floats.
        labels: ``(n,)`` bool (or 0/1), True = positive.

    Returns:
        AP in [0, 1]; NaN when the labels hold no positive or no negative (the same
        degenerate cases as :func:`auroc`; sklearn would warn, or return 1 without
        negatives, whatever the ordering).
    """
    s, y = _scores_labels(scores, labels)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == y.size:
        return float("nan")
    order = np.argsort(-s, kind="stable")
    ss, ys = s[order], y[order]
    # Last position of each block of tied scores: the thresholds.
    last = np.flatnonzero(np.concatenate([ss[1:] != ss[:-1], [True]]))
    tps = np.cumsum(ys)[last]
    precision = tps / (last + 1.0)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.concatenate([[0.0], recall])) * precision))


def jaccard_consistency(rankings: Sequence[np.ndarray], p: float) -> float:
    """Mean pairwise Jaccard similarity of the top-p% sets of several rankings.

    The consistency score of the paper (Section 1): for each pair of runs, ``|A & B| /
    |A | B|`` where A and B are the ids in the first ``k(p)`` places of each ranking
    (k from each ranking's own length); the mean over all pairs.

    Args:
        rankings: ``runs >= 2`` arrays ``(n,)`` of ids (any hashable integers), best first.
        p: percentage in [0, 100].

    Returns:
        Mean Jaccard in [0, 1]; NaN when the top sets are empty (p too small to select
        anything), as the similarity of two empty sets is undefined.
    """
    if len(rankings) < 2:
        raise ValueError(f"jaccard_consistency needs at least 2 rankings, got {len(rankings)}")
    tops = []
    for i, r in enumerate(rankings):
        a = np.asarray(r)
        if a.ndim != 1:
            raise ValueError(f"ranking {i} must be 1-D, got shape {a.shape}")
        tops.append(set(a[: top_k(p, a.size)].tolist()))
    sims = []
    for a_set, b_set in combinations(tops, 2):
        union = len(a_set | b_set)
        if union == 0:
            return float("nan")
        sims.append(len(a_set & b_set) / union)
    return float(np.mean(sims))


def coefficient_of_variation(scores: np.ndarray, top: np.ndarray) -> float:
    """Mean coefficient of variation across runs of the scores of the given points.

    For each id i in ``top``: ``std_r(scores[r, i]) / |mean_r(scores[r, i])|`` with the
    population std (``ddof=0``) over runs; then the mean over the ids. A point whose
    scores never vary counts 0 (also at mean 0); one that varies around mean 0 counts
    inf, which then dominates the mean, as it should for a score with no stable sign.

    Args:
        scores: ``(runs, n)`` floats, ``runs >= 2``; row r = the scores of run r.
        top: ``(k,)`` integer ids in ``[0, n)``, e.g. the top-p% of one ranking.

    Returns:
        The mean CV; NaN when ``top`` is empty.
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] < 2:
        raise ValueError(f"scores must have shape (runs >= 2, n), got {s.shape}")
    ids = np.asarray(top)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"top must be a 1-D array of integer ids, got {ids.dtype} {ids.shape}")
    if ids.size == 0:
        return float("nan")
    if ids.min() < 0 or ids.max() >= s.shape[1]:
        raise ValueError(f"top ids must lie in [0, {s.shape[1]}), got {ids.min()}..{ids.max()}")
    sel = s[:, ids]  # (runs, k)
    if not np.all(np.isfinite(sel)):
        raise ValueError("scores of the selected points hold NaN or inf values")
    std = sel.std(axis=0)
    mean = np.abs(sel.mean(axis=0))
    with np.errstate(divide="ignore", invalid="ignore"):
        cv = np.where(std == 0.0, 0.0, std / mean)
    return float(np.mean(cv))
