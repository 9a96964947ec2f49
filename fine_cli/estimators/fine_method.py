"""The f-INE method: scores by an estimator of :mod:`.fine`, with block-bootstrap standard
errors and permutation p-values (:mod:`.null`), for every (query, subset) pair."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from fine_cli.estimators import null
from fine_cli.estimators.fine import ESTIMATOR_FNS, clip_bounds
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.samples import SignalView, query_samples, self_samples
from fine_cli.registry import Method, register

# Queries per pass in test mode: bounds the (q, G, C*R) sample arrays.
QUERY_CHUNK = 8


def sample_blocks(sig: SignalView) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """X, Y (P, N) blocks in score order: all subsets (self mode), or QUERY_CHUNK queries
    at a time x all subsets (test mode, rows query-major)."""
    if sig.mode == "self":
        yield self_samples(sig)
        return
    for start in range(0, sig.n_queries, QUERY_CHUNK):
        x, y = query_samples(sig, slice(start, start + QUERY_CHUNK))
        q, g, n = x.shape
        yield x.reshape(q * g, n), y.reshape(q * g, n)


def fine_statistics(sig: SignalView, opts: EstimateOptions | None = None) -> dict[str, np.ndarray]:
    """f-INE ``scores`` (q, G) by ``opts.estimator``, plus ``stderr`` and ``pvalue`` (q, G)
    when bootstrap / permutations are asked for."""
    opts = opts or EstimateOptions()
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
            draws = null.permutation_null(x, y, fn, r, swaps)
            parts["pvalue"].append(null.permutation_pvalues(obs, draws, opts.alternative))
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
    return out


def fine_scores(sig: SignalView, queries: slice | None = None, estimator: str = "") -> np.ndarray:
    """(q, G) f-INE influence by ``estimator`` (default: the config's), without extras."""
    opts = EstimateOptions(bootstrap=0, permutations=0)
    if estimator:
        opts.estimator = estimator
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
