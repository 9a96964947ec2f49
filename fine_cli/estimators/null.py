"""Uncertainty and tests for f-INE scores, vectorised over all subsets at once.

- Standard error: a circular block bootstrap over checkpoints. Consecutive checkpoints
  are correlated (the model changes slowly), so whole blocks of ``L`` checkpoints are
  resampled, with their R probe pairs and the X/Y pairing intact; the same resampled
  index sets serve every subset. It is undefined (nan) with fewer than
  ``MIN_SE_SAMPLES`` samples per distribution, and for a subset whose scale collapses
  (``std``, ``paired``: its samples, or a draw of them, do not vary beyond float
  rounding), where the standardised score would divide by nothing and report 1e11;
  :func:`stderr_reason` says why.
- Permutation null: within every probe pair, the with-S sample X_j and the without-S
  sample Y_j swap places with probability 1/2 ("S had no effect" makes the two labels
  interchangeable). The same K swap patterns serve every subset. For a statistic of
  D = X - Y alone (``paired``) a swap is a sign flip of D_j, and B, B' are drawn alike, so
  the null is exact; X and Y also share O_hat(B), computed on B only, which makes the
  swap only approximately exchangeable for the estimators that look at X and Y
  separately (docs/statistics.md measures how much).
- Benjamini-Hochberg selection at a false discovery rate q.

Dimension names: P rows (subsets, or (query, subset) pairs), C checkpoints, R probe pairs
per checkpoint, N = C*R samples per side (checkpoint-major), B bootstrap draws, K swaps.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from fine_cli.estimators.fine import (
    SCALE_REL,
    SCALE_TINY,
    EstimatorFn,
    influence_paired,
    influence_std,
)

# Row x draw x sample elements evaluated at once: bounds the float64 work arrays.
CHUNK_ELEMS = 4_000_000
# Fewest samples per distribution (N = C*R) for a bootstrap standard error: with fewer,
# the draws repeat a handful of values (2 samples: 3 distinct draws), half of them with no
# spread at all, and their standard deviation means nothing.
MIN_SE_SAMPLES = 10
# Fewest checkpoints for a standard error of an estimator that resamples whole checkpoints
# (rb): 2 checkpoints give 3 distinct draws.
MIN_SE_CHECKPOINTS = 3
# A scale below this fraction of the samples' magnitude has collapsed: signals are
# float32 (7 significant digits), so such a spread is rounding, not variation.
COLLAPSE_REL = 1e-6


def block_length(n_checkpoints: int) -> int:
    """Bootstrap block length L = round(C^(1/3)), the usual rate for a block bootstrap."""
    return max(1, round(n_checkpoints ** (1.0 / 3.0)))


def bootstrap_columns(
    n_checkpoints: int, r: int, n_boot: int, rng: np.random.Generator, block: int | None = None
) -> np.ndarray:
    """(B, N) sample columns of B circular block-bootstrap draws over checkpoints."""
    c = n_checkpoints
    length = block_length(c) if block is None else block
    n_blocks = math.ceil(c / length)
    starts = rng.integers(0, c, size=(n_boot, n_blocks))
    ckpt = ((starts[:, :, None] + np.arange(length)) % c).reshape(n_boot, -1)[:, :c]  # (B, C)
    return (ckpt[:, :, None] * r + np.arange(r)).reshape(n_boot, c * r)


def _rows_per_chunk(draws: int, n: int) -> int:
    return max(1, CHUNK_ELEMS // max(1, draws * n))


def bootstrap_se(
    x: np.ndarray, y: np.ndarray, fn: EstimatorFn, r: int, columns: np.ndarray
) -> np.ndarray:
    """(P,) bootstrap standard error of ``fn`` for samples x, y (P, N): the sd (ddof 1) of
    the estimate over the draws ``columns`` (B, N) of :func:`bootstrap_columns`; nan for
    every row when N < MIN_SE_SAMPLES, and for rows whose scale collapses (module text).

    ``std`` and ``paired`` are functions of sums and sums of squares, so their draws are
    matrix products with the draws' column counts (:func:`_moment_draws`)."""
    p, n = x.shape
    n_boot = columns.shape[0]
    if n < MIN_SE_SAMPLES:
        return np.full(p, np.nan)
    if fn in _MOMENT_FORMS:
        counts = np.zeros((n_boot + 1, n), dtype=np.float64)  # (B+1, N) times j is drawn
        np.add.at(counts, (np.arange(n_boot)[:, None], columns), 1.0)
        counts[-1] = 1.0  # and the observed samples, as they are
        zeros = np.zeros_like(counts)
        draws = _by_rows(
            x, y, n_boot + 1, lambda a, b: _moment_draws(fn, a, b, counts, zeros, collapse=True)
        )
        se = draws[:, :-1].std(axis=1, ddof=1)
        se[np.isnan(draws).any(axis=1)] = np.nan
        return se
    out = np.empty(p, dtype=np.float64)
    step = _rows_per_chunk(n_boot, n)
    for start in range(0, p, step):
        sl = slice(start, start + step)
        xs = x[sl][:, columns].reshape(-1, n)  # (p * B, N)
        ys = y[sl][:, columns].reshape(-1, n)
        out[sl] = fn(xs, ys, r).reshape(-1, n_boot).std(axis=1, ddof=1)
    return out


def swap_masks(n_samples: int, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """(K, N) bool: where True, X_j and Y_j trade places in that permutation."""
    return rng.random((n_perm, n_samples)) < 0.5


def permutation_null(
    x: np.ndarray, y: np.ndarray, fn: EstimatorFn, r: int, swaps: np.ndarray
) -> np.ndarray:
    """(P, K) the estimate under each swap pattern of ``swaps`` (K, N)."""
    p, n = x.shape
    k = swaps.shape[0]
    if fn in _MOMENT_FORMS:
        keep = (~swaps).astype(np.float64)  # (K, N) 1 where X_j stays on the X side
        return _by_rows(
            x, y, k, lambda a, b: _moment_draws(fn, a, b, keep, 1.0 - keep, swap_only=True)
        )
    out = np.empty((p, k), dtype=np.float64)
    step = _rows_per_chunk(k, n)
    for start in range(0, p, step):
        sl = slice(start, start + step)
        xs, ys = x[sl, None, :], y[sl, None, :]  # (p, 1, N)
        px = np.where(swaps, ys, xs).reshape(-1, n)  # (p * K, N)
        py = np.where(swaps, xs, ys).reshape(-1, n)
        out[sl] = fn(px, py, r).reshape(-1, k)
    return out


def permutation_test(
    x: np.ndarray,
    y: np.ndarray,
    fn: EstimatorFn,
    r: int,
    swaps: np.ndarray,
    alternative: str,
) -> np.ndarray:
    """(P,) p-values of ``fn(x, y, r)`` against its permutation null under ``swaps`` (K, N):
    ``permutation_pvalues(fn(x, y, r), permutation_null(x, y, fn, r, swaps), alternative)``
    computed a chunk of rows at a time, so that the (P, K) null is never held whole (at
    60,000 subsets and K = 999 it is 480 MB).

    ``paired`` needs only the sums of D = X - Y: a swap flips the sign of D_j and leaves
    D_j^2, so every draw has the same sum of squares s2, and paired = sqrt(2) (s1/n) /
    max(sd, floor) with sd^2 = (s2 - s1^2/n) / (n - 1) increases strictly with s1 (for
    s1 > 0 the numerator grows and the scale shrinks; it is odd in s1). Comparing the
    draws' s1 with the observed one is then the same test, without the (P, K) arithmetic;
    the observed s1 is the product with a row of ones, by the same arithmetic as the draws'.
    """
    p, n = x.shape
    k = swaps.shape[0]
    if fn is influence_paired:
        signs = np.vstack([np.ones((1, n)), 1.0 - 2.0 * swaps])  # (K+1, N), row 0 observed
        step = _rows_per_chunk(k + 1, 1)
        out = np.empty(p, dtype=np.float64)
        for s in range(0, p, step):
            sums = (x[s : s + step] - y[s : s + step]) @ signs.T  # (p, K+1)
            out[s : s + step] = permutation_pvalues(sums[:, 0], sums[:, 1:], alternative)
        return out
    keep = (~swaps).astype(np.float64)

    def draws(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if fn in _MOMENT_FORMS:
            return _moment_draws(fn, a, b, keep, 1.0 - keep, swap_only=True)
        return permutation_null(a, b, fn, r, swaps)

    step = _rows_per_chunk(k, 1 if fn in _MOMENT_FORMS else n)
    out = np.empty(p, dtype=np.float64)
    for s in range(0, p, step):
        a, b = x[s : s + step], y[s : s + step]
        out[s : s + step] = permutation_pvalues(fn(a, b, r), draws(a, b), alternative)
    return out


def _moment_draws(
    fn: EstimatorFn,
    x: np.ndarray,
    y: np.ndarray,
    w_own: np.ndarray,
    w_other: np.ndarray,
    swap_only: bool = False,
    collapse: bool = False,
) -> np.ndarray:
    """(P, K) ``std`` or ``paired`` of K reweighted samples, from sums alone: draw k takes
    w_own[k, j] copies of (X_j, Y_j) as they are and w_other[k, j] copies swapped; both
    (K, N), each draw of N samples in all. Equals ``fn`` on the explicit draws.
    ``swap_only``: every pair is kept once, as it is or swapped (w_own + w_other = 1).
    ``collapse``: nan for a draw whose scale is below COLLAPSE_REL of the magnitude."""
    n = x.shape[1]
    if fn is influence_paired:
        d = x - y
        s1 = d @ (w_own - w_other).T  # a swap flips the sign of D_j
        # a swap leaves D_j^2 as it is: with every pair kept once, one row sum serves all K
        s2 = (d * d).sum(axis=1, keepdims=True) if swap_only else (d * d) @ (w_own + w_other).T
        ref = np.abs(d).max(axis=1, keepdims=True)
        sd = np.sqrt(np.maximum(s2 - s1 * s1 / n, 0.0) / (n - 1))
        out = np.sqrt(2.0) * (s1 / n) / np.maximum(sd, SCALE_REL * ref + SCALE_TINY)
        return np.where(sd < COLLAPSE_REL * ref, np.nan, out) if collapse else out
    sx = x @ w_own.T + y @ w_other.T  # (P, K) sums of the X side
    sy = y @ w_own.T + x @ w_other.T
    sxx = (x * x) @ w_own.T + (y * y) @ w_other.T
    syy = (y * y) @ w_own.T + (x * x) @ w_other.T
    var_x = np.maximum(sxx - sx * sx / n, 0.0) / (n - 1)
    var_y = np.maximum(syy - sy * sy / n, 0.0) / (n - 1)
    ref = np.maximum(np.abs(x).max(axis=1), np.abs(y).max(axis=1))[:, None]
    pooled = np.sqrt((var_x + var_y) / 2.0)
    out = ((sx - sy) / n) / np.maximum(pooled, SCALE_REL * ref + SCALE_TINY)
    return np.where(pooled < COLLAPSE_REL * ref, np.nan, out) if collapse else out


def stderr_reason(n_samples: int, undefined: int, total: int, n_checkpoints: int = 0) -> str:
    """Why ``undefined`` of ``total`` standard errors are nan (see :func:`bootstrap_se`),
    with the fix; ``n_checkpoints`` for an estimator that resamples whole checkpoints."""
    more = (
        "collect more checkpoints (train.epochs, collect.checkpoints) or probe pairs "
        "(collect.probe_repeats)"
    )
    if 0 < n_checkpoints < MIN_SE_CHECKPOINTS:
        return (
            f"only {n_checkpoints} checkpoint(s), and a standard error that resamples whole "
            f"checkpoints needs at least {MIN_SE_CHECKPOINTS}; collect more checkpoints "
            "(train.epochs, collect.checkpoints)"
        )
    if n_samples < MIN_SE_SAMPLES:
        return (
            f"only {n_samples} samples per distribution (checkpoints x probe pairs), and a "
            f"standard error needs at least {MIN_SE_SAMPLES}; {more}"
        )
    return (
        f"the samples' scale collapses (no variation beyond float rounding, in the samples "
        f"or in a bootstrap draw of them) for {undefined} of {total} subsets; {more}"
    )


def _by_rows(
    x: np.ndarray,
    y: np.ndarray,
    n_draws: int,
    draws: Callable[[np.ndarray, np.ndarray], np.ndarray],
) -> np.ndarray:
    """(P, K) ``draws`` applied to chunks of rows of x, y (P, N), which bounds memory."""
    step = _rows_per_chunk(n_draws, 1)
    return np.concatenate(
        [draws(x[s : s + step], y[s : s + step]) for s in range(0, x.shape[0], step)]
    )


# Estimators computed from sums and sums of squares (see _moment_draws).
_MOMENT_FORMS = (influence_std, influence_paired)


def permutation_pvalues(observed: np.ndarray, null: np.ndarray, alternative: str) -> np.ndarray:
    """(P,) Monte Carlo p-values (1 + #{null as extreme}) / (K + 1) of ``observed`` (P,)
    against ``null`` (P, K); valid (never anti-conservative) for any K.

    greater: large positive influence; less: large negative; two-sided:
    min(1, 2 min(p_greater, p_less)).
    """
    k = null.shape[1]
    obs = observed[:, None]

    def share(extreme: np.ndarray) -> np.ndarray:
        return (1.0 + extreme.sum(axis=1)) / (k + 1.0)

    if alternative == "greater":
        return share(null >= obs)
    if alternative == "less":
        return share(null <= obs)
    if alternative == "two-sided":
        return np.minimum(1.0, 2.0 * np.minimum(share(null >= obs), share(null <= obs)))
    raise ValueError(f"alternative must be two-sided, greater or less, got {alternative!r}")


def benjamini_hochberg(pvalues: np.ndarray, q: float) -> tuple[np.ndarray, np.ndarray]:
    """Benjamini-Hochberg at level q: (selected (P,) bool, adjusted p-values (P,)).

    The adjusted p-value of the i-th smallest is min over j >= i of p_(j) * P / j, capped
    at 1; the selection is every hypothesis whose adjusted p-value is at most q.
    """
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    scaled = p[order] * m / np.arange(1, m + 1)
    adjusted_sorted = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    adjusted = np.empty(m, dtype=np.float64)
    adjusted[order] = adjusted_sorted
    return adjusted <= q, adjusted


def min_selectable(n_hypotheses: int, n_perm: int, q: float, alternative: str = "greater") -> int:
    """The fewest hypotheses BH can select when p-values cannot go below their floor
    f = 1/(K+1) (two-sided: 2/(K+1)): the smallest k with k * q / P >= f."""
    floor = (2.0 if alternative == "two-sided" else 1.0) / (n_perm + 1)
    return math.ceil(round(n_hypotheses * floor / q, 9))
