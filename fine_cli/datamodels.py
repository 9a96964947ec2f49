"""Retraining truths for test-point attribution: the linear datamodeling score (LDS) and a
distribution-level mu of each training group on each test point. Pure math, no I/O.

M models are trained on random subsets S_m made of whole training groups; ``design``
``(M, G)`` says which groups each model saw, and ``outcome`` ``(M, m)`` is what each model
does on each test point, oriented so that larger is better for the test point (a margin,
or minus a loss). Then:

- LDS (Park et al. 2023): for test point q, the Spearman correlation over the models of
  the attributed sum ``sum_{G in S_m} score(q, G)`` with ``outcome[m, q]``; the mean over q.
- mu_true(q, G) = sqrt(2) * Phi^-1(AUC), AUC = P(outcome with G > outcome without G) over
  the models (ties count 1/2): f-INE's own definition of influence (Definition 2.1) measured
  by retraining, positive when G helps q.
- Split-half reliability: the models are two independent balanced halves; the Spearman
  correlation of mu_true(q, .) computed on each half, averaged over q, and corrected to the
  full M by Spearman-Brown (2r / (1 + r)): how much of mu_true is signal rather than noise.

Dimension names: M models, G groups, m test points, n training points.
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from fine_cli import metrics
from fine_cli.estimators.fine import auc_with


def balanced_design(n_models: int, n_groups: int, rng: np.random.Generator) -> np.ndarray:
    """(M, G) bool: each group in exactly M/2 models, chosen independently per group, and
    the same holds within each half of the models (rows ``:M/2`` and ``M/2:``), so that
    the two halves give independent truths. ``n_models`` must be a multiple of 4."""
    if n_models % 4 or n_models < 8:
        raise ValueError(f"n_models must be a multiple of 4 and at least 8, got {n_models}")
    half = n_models // 2

    def one_half() -> np.ndarray:
        ranks = np.argsort(np.argsort(rng.random((half, n_groups)), axis=0), axis=0)
        return ranks < half // 2

    return np.vstack([one_half(), one_half()])


def point_mask(design: np.ndarray, ptr: np.ndarray, members: np.ndarray, n: int) -> np.ndarray:
    """(M, n) bool: the training points each model sees (the members of its groups)."""
    sizes = np.diff(ptr)
    group_of = np.repeat(np.arange(sizes.size), sizes)  # (total,) group of each member
    out = np.zeros((design.shape[0], n), dtype=bool)
    out[:, members] = design[:, group_of]
    return out


def group_truth(outcome: np.ndarray, design: np.ndarray) -> np.ndarray:
    """(m, G) mu_true: sqrt(2) Phi^-1 of P(outcome with G > outcome without G), the AUC
    clipped to half its resolution so that a perfectly separated pair stays finite."""
    m, g = outcome.shape[1], design.shape[1]
    n_in = int(design[:, 0].sum())
    n_out = design.shape[0] - n_in
    if np.any(design.sum(axis=0) != n_in) or n_in < 2 or n_out < 2:
        raise ValueError("group_truth needs every group in the same number (>= 2) of models")
    order = np.argsort(~design, axis=0, kind="stable")  # (M, G): in-models first per group
    # (G, M, m): each group's models, in-models first, with their outcomes on every query
    per_group = outcome[order.T]
    with_g = per_group[:, :n_in].transpose(2, 0, 1).reshape(m * g, n_in)
    without = per_group[:, n_in:].transpose(2, 0, 1).reshape(m * g, n_out)
    pairs = n_in * n_out
    auc = np.clip(auc_with(with_g, without), 0.5 / pairs, 1.0 - 0.5 / pairs)
    return (np.sqrt(2.0) * stats.norm.ppf(auc)).reshape(m, g)


def lds(scores: np.ndarray, design: np.ndarray, outcome: np.ndarray) -> np.ndarray:
    """(m,) per test point: Spearman over models of the attributed sum of the groups each
    model saw, ``design @ scores[q]``, with ``outcome[:, q]``."""
    predicted = design.astype(np.float64) @ scores.T  # (M, m)
    return np.array([spearman(predicted[:, q], outcome[:, q]) for q in range(outcome.shape[1])])


def truth_spearman(scores: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """(m,) per test point: Spearman over groups of ``scores[q]`` with ``truth[q]``."""
    return np.array([spearman(scores[q], truth[q]) for q in range(truth.shape[0])])


def split_half_reliability(outcome: np.ndarray, design: np.ndarray) -> dict[str, float]:
    """Spearman between the truths of the two halves of the models (mean over test points)
    and its Spearman-Brown correction to all M models."""
    half = design.shape[0] // 2
    a = group_truth(outcome[:half], design[:half])
    b = group_truth(outcome[half:], design[half:])
    r = float(np.nanmean(truth_spearman(a, b)))
    return {"split_half": r, "full_m": 2.0 * r / (1.0 + r) if r > -1.0 else float("nan")}


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two (k,) arrays; nan when either is constant."""
    ra, rb = metrics.average_ranks(a), metrics.average_ranks(b)
    if np.ptp(ra) == 0 or np.ptp(rb) == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])
