"""TRAK (Park et al., 2023) on the count-sketched gradients that train-collect stores.

For each model e of the ensemble (main, auxiliary, and ``collect.features.extra_models``
more), with ``Phi_e`` ``(n, k)`` the sketched gradients of the output function
``f = log(p / (1 - p))`` at the end of training:

    tau(q, z_j) = [ (1/E) sum_e phi_e(q)^T (Phi_e^T Phi_e + lambda_e I)^{-1} phi_e(z_j) ] * Qbar_j

with ``Qbar_j = (1/E) sum_e (1 - p_e(z_j))``: TRAK's ensemble estimator (kernel inverse
per model, averaged, times the averaged weights), without its optional soft-thresholding.
``lambda_e = RIDGE * trace / k`` only keeps the kernel invertible; it is negligible
whenever ``n >> k``. Self-influence
(mislabel detection) is the diagonal ``tau(z_j, z_j)``; a subset's score is the sum of its
members' (TRAK's linear datamodel is additive). Larger = more influential.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.linalg import cho_factor, cho_solve

from fine_cli.estimators import projected
from fine_cli.estimators.samples import SignalView, _times, membership
from fine_cli.registry import Method, register

# Relative ridge on the kernel (a fraction of its mean eigenvalue): numerical safety only.
RIDGE = 1e-6
# Training points per block of the (k, block) solves: bounds float64 temporaries.
BLOCK = 8192


def kernel_factor(phi: np.ndarray, ridge: float) -> tuple[np.ndarray, bool]:
    """Cholesky factor of ``Phi^T Phi + ridge * trace / k * I`` for ``phi`` ``(n, k)``."""
    kern = phi.T @ phi
    k = kern.shape[0]
    lam = ridge * np.trace(kern) / k
    kern[np.diag_indices(k)] += lam if lam > 0 else ridge
    return cho_factor(kern, lower=True, check_finite=False)


def trak_scores(
    features: np.ndarray,
    one_minus_p: np.ndarray,
    query_features: np.ndarray | None = None,
    ridge: float = RIDGE,
) -> np.ndarray:
    """TRAK scores of training points.

    Args:
        features: ``(E, n, k)`` sketched output-function gradients of the training points.
        one_minus_p: ``(E, n)`` ``1 - p(y_j | x_j)`` of each model.
        query_features: ``(E, m, k)`` of test points, or None for self-influence.
        ridge: relative ridge (see the module docstring).

    Returns:
        ``(m, n)`` float64, or ``(1, n)`` self-influence when ``query_features`` is None.
    """
    e, n, _ = features.shape
    m = 1 if query_features is None else query_features.shape[1]
    out = np.zeros((m, n), np.float64)
    for i in range(e):
        phi = features[i].astype(np.float64)  # (n, k)
        cho = kernel_factor(phi, ridge)
        if query_features is None:
            for s in range(0, n, BLOCK):
                block = phi[s : s + BLOCK]  # (b, k)
                sol = cho_solve(cho, block.T, check_finite=False)  # (k, b)
                out[0, s : s + BLOCK] += np.einsum("bk,kb->b", block, sol)
        else:
            sol = cho_solve(cho, query_features[i].astype(np.float64).T, check_finite=False)
            out += sol.T @ phi.T  # (m, n)
    return out / e * one_minus_p.astype(np.float64).mean(axis=0)[None, :]


def trak(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) TRAK scores from a signals view."""
    projected.require(sig, "trak")
    assert sig.proj_grad is not None and sig.one_minus_p is not None
    q_feats = None
    if sig.mode == "test":
        assert sig.test_proj_grad is not None
        q_feats = projected.query_rows(sig.test_proj_grad, queries)
    per_point = trak_scores(sig.proj_grad, sig.one_minus_p, q_feats)
    ptr, members = sig.groups()
    return _times(per_point, membership(ptr, members, sig.n_train))


def _meta(sig: SignalView, options: Any) -> dict[str, Any]:
    assert sig.proj_grad is not None
    e, _, k = sig.proj_grad.shape
    return {"proj_dim": int(k), "ensemble": int(e), "ridge": RIDGE}


register(
    Method(
        name="trak",
        description="TRAK: projected output-function gradients, kernel inverse, the run's models",
        score=trak,
        features=True,
        meta=_meta,
        cost="ensemble",
        order=5,
    )
)
