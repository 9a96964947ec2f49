"""Algorithm 2 (f-INE stage 2): from samples of P and Q to the Gaussian influence mu.

For every threshold t among the pooled sample values:
    alpha_t = mean(X >= t), beta_t = mean(Y <= t),
    mu_t = Phi^-1(1 - alpha_t) - Phi^-1(beta_t),
and mu_alg is the mu_t of largest magnitude (sign kept; the first such t in ascending
order on exact ties, as a loop from T_min to T_max would find it). alpha and beta are
clipped to [0.5/N, 1 - 0.5/N] so every mu_t is finite (ALGORITHM.md, Decision:
infinities). The reported influence is -mu_alg (Decision: sign), positive when S helps.

Vectorised as one ROC computation per pair: sort X and Y once per pair, then every
threshold's counts come from a batched binary search.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

# Pairs processed per batched search: bounds the (pairs, 2N) float64 work arrays.
PAIR_CHUNK = 16384


def clip_bounds(n_x: int, n_y: int) -> tuple[tuple[float, float], tuple[float, float]]:
    """The clip applied to alpha (n_x samples) and beta (n_y samples)."""
    return (0.5 / n_x, 1.0 - 0.5 / n_x), (0.5 / n_y, 1.0 - 0.5 / n_y)


def mu_alg2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Algorithm 2's signed mu for each row: x (P, Nx) samples of P, y (P, Ny) of Q -> (P,)."""
    x_t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64)
    y_t = torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float64)
    if x_t.ndim != 2 or y_t.ndim != 2 or x_t.shape[0] != y_t.shape[0]:
        raise ValueError(f"x and y must be (P, N) with equal P, got {x.shape} and {y.shape}")
    out = torch.empty(x_t.shape[0], dtype=torch.float64)
    for start in range(0, x_t.shape[0], PAIR_CHUNK):
        sl = slice(start, start + PAIR_CHUNK)
        out[sl] = _mu_chunk(x_t[sl], y_t[sl])
    return out.numpy()


def _quantile_table(n: int, lo: float, hi: float) -> torch.Tensor:
    """Phi^-1(clip(k / n)) for every count k = 0..n: counts are integers, so a table of
    n + 1 values replaces millions of Phi^-1 calls."""
    k = torch.arange(n + 1, dtype=torch.float64)
    return torch.special.ndtri((k / n).clamp(lo, hi))


def _mu_chunk(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n_x, n_y = x.shape[1], y.shape[1]
    (a_lo, a_hi), (b_lo, b_hi) = clip_bounds(n_x, n_y)
    xs, _ = torch.sort(x, dim=1)
    ys, _ = torch.sort(y, dim=1)
    thresholds = torch.cat([xs, ys], dim=1)  # (P, Nx+Ny) every pooled value, unsorted
    # #(X < t) by left search; #(Y <= t) by right search.
    n_lt = torch.searchsorted(xs, thresholds, right=False)
    n_le = torch.searchsorted(ys, thresholds, right=True)
    # Phi^-1(1 - alpha) with alpha = #(X >= t)/Nx = 1 - #(X < t)/Nx; clip(1 - a) = 1 - clip(a)
    # because the clip interval is symmetric about 1/2.
    z_x = _quantile_table(n_x, a_lo, a_hi)[n_lt]
    z_y = _quantile_table(n_y, b_lo, b_hi)[n_le]
    mu = z_x - z_y  # (P, Nx+Ny)
    mag = mu.abs()
    top = mag.max(dim=1, keepdim=True).values
    # Ties in |mu|: the smallest threshold wins, as in a loop from T_min upwards (equal
    # thresholds give equal mu, so any of them will do).
    t_first = torch.where(mag == top, thresholds, torch.inf).min(dim=1, keepdim=True).values
    pick = torch.argmax(((mag == top) & (thresholds == t_first)).to(torch.int8), dim=1)
    return mu.gather(1, pick[:, None]).squeeze(1)


def influence_alg2(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The project's f-INE score: -mu_alg (positive = S helps the test point)."""
    return -mu_alg2(x, y)


def mu_alg2_reference(x: np.ndarray, y: np.ndarray) -> float:
    """Plain loop over thresholds of one pair: the paper's pseudocode, for tests."""
    from scipy.stats import norm

    n_x, n_y = len(x), len(y)
    (a_lo, a_hi), (b_lo, b_hi) = clip_bounds(n_x, n_y)
    best = 0.0
    for t in sorted(list(x) + list(y)):
        alpha = min(max(sum(1 for v in x if v >= t) / n_x, a_lo), a_hi)
        beta = min(max(sum(1 for v in y if v <= t) / n_y, b_lo), b_hi)
        mu_t = float(norm.ppf(1.0 - alpha) - norm.ppf(beta))
        if abs(mu_t) > abs(best):
            best = mu_t
    return best


def max_abs_mu(n_x: int, n_y: int) -> float:
    """The largest |mu| that the clip allows: what a perfectly separated pair gets."""
    from scipy.stats import norm

    (_, a_hi), (_, b_hi) = clip_bounds(n_x, n_y)
    return float(norm.ppf(a_hi) + norm.ppf(b_hi))


# ---- estimators beside Algorithm 2 (docs/statistics.md compares them) ------------------
# Every estimator maps samples x = O~ (with S) and y = O~' (without S), each (P, N) with
# N = C*R ordered checkpoint-major (sample j belongs to checkpoint j // R), to (P,)
# influence in the project's sign: positive = S helps the test point.

# A row whose samples do not vary has no scale; its standardised difference is 0 when the
# means agree. SCALE_TINY keeps the division finite whatever the units of the signals.
SCALE_REL = 1e-12
SCALE_TINY = 1e-300


def auc_with(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(P,) AUC = P(X > Y) + P(X = Y) / 2 per row, x (P, Nx), y (P, Ny): the Mann-Whitney
    statistic, by a batched search of every x value in the sorted y."""
    x_t = torch.as_tensor(np.ascontiguousarray(x), dtype=torch.float64)
    ys, _ = torch.sort(torch.as_tensor(np.ascontiguousarray(y), dtype=torch.float64), dim=1)
    below = torch.searchsorted(ys, x_t, right=False)  # #(Y < x)
    upto = torch.searchsorted(ys, x_t, right=True)  # #(Y <= x)
    wins = (below + upto).to(torch.float64).sum(dim=1) / 2.0
    return (wins / (x.shape[1] * y.shape[1])).numpy()


def influence_auc(x: np.ndarray, y: np.ndarray, r: int = 1) -> np.ndarray:
    """(P,) mu = sqrt(2) * Phi^-1(AUC): exact under G_mu when X ~ N(mu, 1), Y ~ N(0, 1).

    The AUC is clipped to [1/(2 Nx Ny), 1 - 1/(2 Nx Ny)] (half its resolution) so that
    perfectly separated samples get a finite mu.
    """
    del r  # pooled over checkpoints
    pairs = x.shape[1] * y.shape[1]
    auc = np.clip(auc_with(x, y), 0.5 / pairs, 1.0 - 0.5 / pairs)
    return np.sqrt(2.0) * torch.special.ndtri(torch.as_tensor(auc)).numpy()


def _safe_ratio(num: np.ndarray, scale: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """num / scale with scale floored relative to the magnitude ``ref`` of the row."""
    return num / np.maximum(scale, SCALE_REL * ref + SCALE_TINY)


def influence_std(x: np.ndarray, y: np.ndarray, r: int = 1) -> np.ndarray:
    """(P,) standardised mean difference (mean X - mean Y) / pooled sd (ddof 1 each)."""
    del r
    diff = x.mean(axis=1) - y.mean(axis=1)
    pooled = np.sqrt((x.var(axis=1, ddof=1) + y.var(axis=1, ddof=1)) / 2.0)
    ref = np.maximum(np.abs(x).max(axis=1), np.abs(y).max(axis=1))
    return _safe_ratio(diff, pooled, ref)


def influence_paired(x: np.ndarray, y: np.ndarray, r: int = 1) -> np.ndarray:
    """(P,) sqrt(2) * mean(D) / sd(D) of the paired differences D = X - Y = O - O'.

    O_hat is common to a pair and cancels, so D is the with/without contrast of one probe
    pair alone. The factor sqrt(2) gives the same scale as ``std`` when X and Y are
    independent with equal variances.
    """
    del r
    d = x - y
    ref = np.abs(d).max(axis=1)
    return np.sqrt(2.0) * _safe_ratio(d.mean(axis=1), d.std(axis=1, ddof=1), ref)


def influence_rb(m: np.ndarray, v: np.ndarray) -> np.ndarray:
    """(P,) ``paired`` in the limit of infinitely many probe pairs per checkpoint, from the
    per-checkpoint conditional mean ``m`` (P, C) and variance ``v`` (P, C) of D_c
    (:func:`fine_cli.estimators.samples.self_moments`): mean(D) tends to mean_c m_c and the
    pooled variance of D to mean_c v_c + var_c m_c, so

        rb = sqrt(2) * mean_c m_c / sqrt(mean_c v_c + var_c m_c).

    Rao-Blackwellised: the random probe batches are integrated out given the checkpoint,
    so one probe pair (whose points estimate the moments) gives the many-pair score.
    """
    mean = m.mean(axis=1)
    scale = np.sqrt(np.maximum(v.mean(axis=1) + m.var(axis=1), 0.0))
    ref = np.abs(m).max(axis=1)
    return np.sqrt(2.0) * _safe_ratio(mean, scale, ref)


EstimatorFn = Callable[[np.ndarray, np.ndarray, int], np.ndarray]


def _alg2(x: np.ndarray, y: np.ndarray, r: int = 1) -> np.ndarray:
    del r
    return influence_alg2(x, y)


# name -> (x (P, N), y (P, N), R) -> (P,) influence. Names and the default live in
# fine_cli.config (ESTIMATORS, DEFAULT_ESTIMATOR), shared with the CLI help.
ESTIMATOR_FNS: dict[str, EstimatorFn] = {
    "alg2": _alg2,
    "auc": influence_auc,
    "std": influence_std,
    "paired": influence_paired,
}
# Estimators that read O_hat (X and Y apart), so need the auxiliary model; paired reads
# D = X - Y, where O_hat cancels, and rb the main model's moments.
NEEDS_AUX = frozenset({"alg2", "auc", "std"})
# Estimators computed from per-checkpoint moments instead of samples (not in ESTIMATOR_FNS).
MOMENT_ESTIMATORS = frozenset({"rb"})
ESTIMATOR_DESCRIPTIONS = {
    "alg2": "Algorithm 2: the largest |mu_t| over thresholds (the paper's; biased away from 0)",
    "auc": "sqrt(2) * Phi^-1(P(X > Y)): unbiased under G_mu, rank-based",
    "std": "(mean X - mean Y) / pooled sd",
    "paired": "sqrt(2) * mean(D) / sd(D), D = X - Y = O - O' per probe pair",
    "rb": "paired's many-probe-pair limit from each checkpoint's moments (Rao-Blackwellised)",
}
