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
