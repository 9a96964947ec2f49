"""Influence functions (Koh & Liang, 2017) in the count-sketch space, on the main model.

With ``g`` the sketched loss gradient at the end of training (``g = -(1 - p) S grad f``,
from the same features as TRAK) and ``G`` the sketched Gauss-Newton matrix of the mean
training loss (for softmax cross-entropy: the Fisher; for a linear model: the exact
Hessian), the effect of removing ``z`` on the loss of ``q`` is, to first order and up to
the factor ``1/n``,

    I(q, z) = g(q)^T (G + lambda I)^{-1} g(z),   lambda = DAMPING * trace(G) / k.

Positive = removing ``z`` raises the loss of ``q``: ``z`` helps ``q``, the sign of f-INE and
TracIn. Self-influence ``I(z, z) >= 0`` ranks mislabelled points first. Koh & Liang's
Hessian is replaced by the Gauss-Newton matrix because the Hessian of a trained network is
indefinite, and damping is needed because ``G`` is close to singular in most directions.
A subset's score is the sum of its members' (the first-order effect is additive).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from fine_cli.estimators import projected
from fine_cli.estimators.samples import MAIN, SignalView, _times, membership
from fine_cli.registry import Method, register

# Damping as a fraction of the curvature's mean eigenvalue (trace / k).
DAMPING = 0.01
# Training points per block of the (k, block) solves: bounds float64 temporaries.
BLOCK = 8192


def damped(curvature: np.ndarray, damping: float) -> np.ndarray:
    """``G + damping * trace(G) / k * I`` (a copy), for ``curvature`` ``(k, k)``."""
    g = np.array(curvature, dtype=np.float64)
    k = g.shape[0]
    lam = damping * np.trace(g) / k
    g[np.diag_indices(k)] += lam
    return g


def if_scores(
    train_grads: np.ndarray,
    curvature: np.ndarray,
    query_grads: np.ndarray | None = None,
    damping: float = DAMPING,
) -> np.ndarray:
    """Influence-function scores of training points.

    Args:
        train_grads: ``(n, k)`` loss gradients of the training points.
        curvature: ``(k, k)`` symmetric positive semi-definite curvature ``G``.
        query_grads: ``(m, k)`` loss gradients of test points, or None for self-influence.
        damping: relative damping (see the module docstring).

    Returns:
        ``(m, n)`` float64, or ``(1, n)`` self-influence when ``query_grads`` is None.
    """
    cho = cho_factor(damped(curvature, damping), lower=True, check_finite=False)
    g = train_grads.astype(np.float64)
    if query_grads is not None:
        sol = cho_solve(cho, query_grads.astype(np.float64).T, check_finite=False)  # (k, m)
        return np.asarray(sol.T @ g.T)
    n = g.shape[0]
    out = np.zeros((1, n), np.float64)
    for s in range(0, n, BLOCK):
        block = g[s : s + BLOCK]
        out[0, s : s + BLOCK] = np.einsum("bk,kb->b", block, cho_solve(cho, block.T))
    return out


def loss_grads(proj_grad: np.ndarray, one_minus_p: np.ndarray) -> np.ndarray:
    """``(n, k)`` sketched loss gradients ``-(1 - p) S grad f`` from ``(n, k)``, ``(n,)``."""
    return -one_minus_p.astype(np.float64)[:, None] * proj_grad.astype(np.float64)


def influence(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) influence-function scores from a signals view (main model)."""
    projected.require(sig, "if", curvature=True)
    assert sig.proj_grad is not None and sig.one_minus_p is not None and sig.ggn is not None
    train = loss_grads(sig.proj_grad[MAIN], sig.one_minus_p[MAIN])
    query = None
    if sig.mode == "test":
        assert sig.test_proj_grad is not None and sig.test_one_minus_p is not None
        query = loss_grads(
            projected.query_rows(sig.test_proj_grad, queries)[MAIN],
            projected.query_rows(sig.test_one_minus_p, queries)[MAIN],
        )
    per_point = if_scores(train, sig.ggn, query)
    ptr, members = sig.groups()
    return _times(per_point, membership(ptr, members, sig.n_train))


def _meta(sig: SignalView, options: Any) -> dict[str, Any]:
    assert sig.proj_grad is not None
    return {"proj_dim": int(sig.proj_grad.shape[2]), "damping": DAMPING, "model": "main"}


register(
    Method(
        name="if",
        description="influence functions: projected loss gradients, damped Gauss-Newton inverse",
        score=influence,
        features=True,
        curvature=True,
        meta=_meta,
        cost="main-features",
        order=6,
    )
)
