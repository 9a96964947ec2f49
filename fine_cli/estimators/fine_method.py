"""The f-INE method: scores by an estimator of :mod:`.fine`, with block-bootstrap standard
errors and permutation p-values (:mod:`.null`), for every (query, subset) pair."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from fine_cli.config import ESTIMATORS
from fine_cli.errors import InputFileError
from fine_cli.estimators import null
from fine_cli.estimators.fine import (
    ESTIMATOR_FNS,
    MOMENT_ESTIMATORS,
    NEEDS_AUX,
    SCALE_REL,
    SCALE_TINY,
    clip_bounds,
    influence_rb,
)
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.samples import (
    SignalView,
    query_moments,
    query_samples,
    self_moments,
    self_samples,
)
from fine_cli.registry import Method, register

# Queries per pass in test mode: bounds the (q, G, C*R) sample arrays.
QUERY_CHUNK = 8


def _blocks(
    sig: SignalView,
    whole: Callable[[SignalView], tuple[np.ndarray, np.ndarray]],
    queries: Callable[[SignalView, slice], tuple[np.ndarray, np.ndarray]],
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Pairs of (P, K) blocks in score order: ``whole(sig)`` for all subsets (self mode),
    or ``queries(sig, rows)``'s (q, G, K) arrays QUERY_CHUNK queries at a time x all
    subsets (test mode, rows query-major)."""
    if sig.mode == "self":
        yield whole(sig)
        return
    for start in range(0, sig.n_queries, QUERY_CHUNK):
        a, b = queries(sig, slice(start, start + QUERY_CHUNK))
        q, g, k = a.shape
        yield a.reshape(q * g, k), b.reshape(q * g, k)


def sample_blocks(sig: SignalView) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """X, Y (P, N) blocks in score order (see :func:`_blocks`)."""
    return _blocks(sig, self_samples, query_samples)


def moment_blocks(sig: SignalView) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """m, v (P, C) blocks in score order, as :func:`sample_blocks` (estimator rb)."""
    return _blocks(sig, self_moments, query_moments)


def check_estimator(sig: SignalView, estimator: str) -> None:
    """Refuse, with the fix, an estimator that these signals cannot feed."""
    if estimator in NEEDS_AUX and not sig.has_aux:
        raise InputFileError(
            f"estimator '{estimator}' reads O_hat, the auxiliary model's signals, which were "
            "not collected (the auxiliary model is trained only when the estimator needs it); "
            "re-run train-collect with collect.auxiliary=true, or use --estimator rb or paired."
        )


def available_estimators(sig: SignalView) -> list[str]:
    """The f-INE estimators that ``sig`` can feed (fine validate scores them all)."""
    out = []
    for name in ESTIMATORS:
        if name in NEEDS_AUX and not sig.has_aux:
            continue
        if name in MOMENT_ESTIMATORS and sig.mode == "self" and sig.ip2 is None:
            continue
        out.append(name)
    return out


def _rb_statistics(sig: SignalView, opts: EstimateOptions) -> dict[str, np.ndarray]:
    """rb scores; its stderr by the block bootstrap of whole checkpoints (m_c, v_c kept
    together); its p-values are paired's exact sign-flip test of the contrasts D (rb's
    moments do not change when X_j and Y_j swap, so the test of "S has no effect" is the
    one on D itself)."""
    c = sig.n_checkpoints
    boot_rng, perm_rng = (
        np.random.default_rng([stream, opts.seed & 0xFFFFFFFF]) for stream in (1, 2)
    )
    cols = null.bootstrap_columns(c, 1, opts.bootstrap, boot_rng) if opts.bootstrap else None
    parts: dict[str, list[np.ndarray]] = {"scores": [], "stderr": [], "pvalue": []}
    for m, v in moment_blocks(sig):
        parts["scores"].append(influence_rb(m, v))
        if cols is not None:
            parts["stderr"].append(_rb_bootstrap_se(m, v, cols))
    if opts.permutations:
        swaps = null.swap_masks(sig.n_samples, opts.permutations, perm_rng)
        paired = ESTIMATOR_FNS["paired"]
        for x, y in sample_blocks(sig):
            test = null.permutation_test(x, y, paired, sig.n_repeats, swaps, opts.alternative)
            parts["pvalue"].append(test)
    q = 1 if sig.mode == "self" else sig.n_queries
    return {k: np.concatenate(v).reshape(q, -1) for k, v in parts.items() if v}


def _rb_bootstrap_se(m: np.ndarray, v: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(P,) sd over the draws ``cols`` (B, C) of checkpoints of rb's score; nan with fewer
    than null.MIN_SE_CHECKPOINTS checkpoints (2 give 3 distinct draws).

    rb is a function of each draw's means of m, v and m^2, so the B draws are three matrix
    products with the draws' checkpoint counts, not B explicit (P, C) resamplings; m is
    centred on its row mean first, so that var = mean(m^2) - mean(m)^2 does not cancel.
    """
    p, c = m.shape
    if c < null.MIN_SE_CHECKPOINTS:
        return np.full(p, np.nan)
    n_boot = cols.shape[0]
    counts = np.zeros((n_boot, c), dtype=np.float64)  # (B, C) times checkpoint c is drawn
    np.add.at(counts, (np.arange(n_boot)[:, None], cols), 1.0)
    weights = counts.T / c  # (C, B): a draw's mean is a product with its column
    step = max(1, null.CHUNK_ELEMS // max(1, n_boot))
    out = np.empty(p, dtype=np.float64)
    for s in range(0, p, step):
        mb, vb = m[s : s + step], v[s : s + step]
        centre = mb.mean(axis=1, keepdims=True)
        mc = mb - centre
        # three (p, B) work arrays, updated in place (fresh memory is slow to fault in)
        draws = mc @ weights  # each draw's mean of the centred m
        var = (mc * mc) @ weights
        scale = np.square(draws)
        np.subtract(var, scale, out=var)  # the draw's variance of m
        np.maximum(var, 0.0, out=var)
        np.matmul(vb, weights, out=scale)
        scale += var
        np.maximum(scale, 0.0, out=scale)
        np.sqrt(scale, out=scale)
        # influence_rb floors the scale by the draw's own max |m|; the row's max bounds it,
        # so a draw above the row's floor is exact, and rows with one below are redone
        floor = SCALE_REL * np.abs(mb).max(axis=1, keepdims=True) + SCALE_TINY
        low = (scale < floor).any(axis=1)
        np.maximum(scale, floor, out=scale)
        draws += centre
        draws *= np.sqrt(2.0)
        draws /= scale
        if low.any():
            draws[low] = _rb_draws(mb[low], vb[low], cols)
        out[s : s + step] = _row_sd(draws, var)
    return out


def _row_sd(a: np.ndarray, work: np.ndarray) -> np.ndarray:
    """(P,) a.std(axis=1, ddof=1) of a (P, B), with ``work`` (P, B) as scratch space."""
    np.subtract(a, a.mean(axis=1, keepdims=True), out=work)
    np.square(work, out=work)
    return np.sqrt(work.sum(axis=1) / (a.shape[1] - 1))


def _rb_draws(m: np.ndarray, v: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(P, B) rb of each explicit draw ``cols`` (B, C) of checkpoints."""
    n_boot, c = cols.shape
    step = max(1, null.CHUNK_ELEMS // max(1, n_boot * c))
    out = []
    for s in range(0, m.shape[0], step):
        mb, vb = m[s : s + step][:, cols], v[s : s + step][:, cols]  # (p, B, C)
        p = mb.shape[0]
        draws = influence_rb(mb.reshape(p * n_boot, -1), vb.reshape(p * n_boot, -1))
        out.append(draws.reshape(p, n_boot))
    return np.concatenate(out) if out else np.empty((0, n_boot))


def fine_statistics(sig: SignalView, opts: EstimateOptions | None = None) -> dict[str, np.ndarray]:
    """f-INE ``scores`` (q, G) by ``opts.estimator``, plus ``stderr`` and ``pvalue`` (q, G)
    when bootstrap / permutations are asked for."""
    opts = opts or EstimateOptions()
    check_estimator(sig, opts.estimator)
    if opts.estimator in MOMENT_ESTIMATORS:
        return _rb_statistics(sig, opts)
    fn = ESTIMATOR_FNS[opts.estimator]
    r, c = sig.n_repeats, sig.n_checkpoints
    boot_rng, perm_rng = (
        np.random.default_rng([stream, opts.seed & 0xFFFFFFFF]) for stream in (1, 2)
    )
    cols = null.bootstrap_columns(c, r, opts.bootstrap, boot_rng) if opts.bootstrap else None
    swaps = null.swap_masks(c * r, opts.permutations, perm_rng) if opts.permutations else None
    parts: dict[str, list[np.ndarray]] = {"scores": [], "stderr": [], "pvalue": []}
    for x, y in sample_blocks(sig):
        obs = fn(x, y, r)
        parts["scores"].append(obs)
        if cols is not None:
            parts["stderr"].append(null.bootstrap_se(x, y, fn, r, cols))
        if swaps is not None:
            parts["pvalue"].append(null.permutation_test(x, y, fn, r, swaps, opts.alternative))
    q = 1 if sig.mode == "self" else sig.n_queries
    return {k: np.concatenate(v).reshape(q, -1) for k, v in parts.items() if v}


def fine_meta(sig: SignalView, opts: EstimateOptions) -> dict[str, Any]:
    """What made an f-INE score: estimator, clip (alg2), bootstrap and permutation settings."""
    out: dict[str, Any] = {"estimator": opts.estimator, "stat_seed": opts.seed}
    if opts.estimator == "alg2":
        (a_lo, a_hi), (b_lo, b_hi) = clip_bounds(sig.n_samples, sig.n_samples)
        out["clip"] = {"alpha": [a_lo, a_hi], "beta": [b_lo, b_hi]}
    if opts.bootstrap:
        out["bootstrap"] = {"draws": opts.bootstrap, "block": null.block_length(sig.n_checkpoints)}
    if opts.permutations:
        out["permutations"] = {"draws": opts.permutations, "alternative": opts.alternative}
        if opts.estimator in MOMENT_ESTIMATORS:
            out["permutations"]["statistic"] = "paired"  # rb's p-values: paired's test of D
    return out


def fine_scores(sig: SignalView, queries: slice | None = None, estimator: str = "") -> np.ndarray:
    """(q, G) f-INE influence by ``estimator`` (default: the config's), without extras."""
    opts = EstimateOptions(bootstrap=0, permutations=0)
    if estimator:
        opts.estimator = estimator
    check_estimator(sig, opts.estimator)
    if opts.estimator in MOMENT_ESTIMATORS:
        if sig.mode == "self":
            return influence_rb(*self_moments(sig))[None, :]
        m, v = query_moments(sig, queries)
        q, g, c = m.shape
        return influence_rb(m.reshape(q * g, c), v.reshape(q * g, c)).reshape(q, g)
    fn = ESTIMATOR_FNS[opts.estimator]
    if sig.mode == "self":
        x, y = self_samples(sig)
        return fn(x, y, sig.n_repeats)[None, :]
    x, y = query_samples(sig, queries)
    q, g, n = x.shape
    return fn(x.reshape(q * g, n), y.reshape(q * g, n), sig.n_repeats).reshape(q, g)


register(
    Method(
        name="fine",
        description="f-INE: mu from the with/without-S samples (--estimator; docs/statistics.md)",
        full=fine_statistics,
        meta=fine_meta,
        cost="both",
        order=0,
    )
)
