"""LESS (Xia et al. 2024): TracIn with cosine similarity, Adam-preconditioned training
gradients and LoRA checkpoints, the paper's baseline for language models (Section 4.3).

For a query (a set of test prompts q') and a training point z::

    LESS(query, z) = sum_c lr_c * mean_{q' in query} cos(g_c(q'), Gamma_c(z))

where ``Gamma_c(z)`` is the update Adam would make from z's gradient alone at checkpoint c
(LESS's ``obtain_gradients_with_adam``: ``m' / sqrt(v' + eps)``, with ``m' = beta1 m +
(1 - beta1) g`` and ``v' = beta2 v + (1 - beta2) g^2`` from the optimiser's moments) and
``g_c(q')`` the plain gradient of the test prompt's loss. It is today's ``grad-cos`` in test
mode with preconditioned training gradients, averaged per test prompt as LESS does (each
prompt counts equally, whatever its gradient's norm). A subset's score is the mean over its
members. The arrays come from :mod:`fine_cli.llm.collect` (exact, or count-sketched to d
dimensions as LESS's own random projection); with ``precondition: none`` there,
``Gamma = g``, as on signals without those arrays (train-collect's).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_cli.errors import InputFileError
from fine_cli.estimators.baselines import NORM_EPS
from fine_cli.estimators.samples import MAIN, SignalView, _times, membership
from fine_cli.registry import Method, register
from fine_cli.results import Signals, check_shape, require_finite

LESS_ARRAYS = ("less_gram", "less_sqnorm", "less_test_sqnorm", "less_query")


def attach(signals: Signals, sig: SignalView) -> None:
    """Check LESS's arrays of ``signals`` (when present) and set them on ``sig``."""
    if "less_gram" not in signals:
        return
    missing = [k for k in LESS_ARRAYS if k not in signals]
    if missing or sig.gram is None:
        raise InputFileError(
            f"signals hold a partial set of LESS arrays (missing {', '.join(missing) or 'gram'}); "
            "re-create them with fine run on an llm config."
        )
    c, n, q = sig.n_checkpoints, sig.n_train, sig.n_queries
    m = signals["less_query"].shape[0]
    check_shape(signals, "less_gram", (c, m, n))
    check_shape(signals, "less_sqnorm", (c, n))
    check_shape(signals, "less_test_sqnorm", (c, m))
    query = signals["less_query"]
    if query.size and (query.min() < 0 or query.max() >= q or np.unique(query).size != q):
        raise InputFileError(
            "signals 'less_query' must give every test prompt a query in 0..q-1, each query "
            "at least one prompt; re-create the signals."
        )
    require_finite(signals, ("less_gram", "less_sqnorm", "less_test_sqnorm"))
    sig.less_gram, sig.less_sqnorm = signals["less_gram"], signals["less_sqnorm"]
    sig.less_test_sqnorm, sig.less_query = signals["less_test_sqnorm"], query


def less(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) LESS scores (module docstring). Signals without LESS's arrays (train-collect's)
    give LESS on plain gradients, each test point its own query: ``precondition: none``;
    in self mode that is ``sum_c lr_c cos(g, g)``, the same for every point (the diagonal
    of test mode, as for TracIn)."""
    lr = sig.lr.astype(np.float64)
    qs = queries or slice(None)
    if sig.less_gram is not None:
        assert sig.less_sqnorm is not None and sig.less_test_sqnorm is not None
        assert sig.less_query is not None
        per_prompt = _weighted_cos(lr, sig.less_gram, sig.less_test_sqnorm, sig.less_sqnorm)
        onehot = np.zeros((sig.n_queries, per_prompt.shape[0]))
        onehot[sig.less_query, np.arange(per_prompt.shape[0])] = 1.0
        mean = onehot / onehot.sum(axis=1, keepdims=True)  # (q, m') mean over a query's prompts
        per_query = (mean @ per_prompt)[qs]  # (q, n)
    elif sig.mode == "test":
        assert sig.gram is not None and sig.test_sqnorm is not None
        per_query = _weighted_cos(
            lr, sig.gram[MAIN][:, qs], sig.test_sqnorm[MAIN][:, qs], sig.sqnorm[MAIN]
        )
    else:
        per_query = np.full((1, sig.n_train), lr.sum())
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)
    return _times(per_query, mem) / np.diff(ptr).astype(np.float64)


def _weighted_cos(
    lr: np.ndarray, gram: np.ndarray, test_sq: np.ndarray, sq: np.ndarray
) -> np.ndarray:
    """(m, n) sum_c lr_c cos from (C, m, n) inner products and (C, m), (C, n) squared norms."""
    cos = gram.astype(np.float64) / np.sqrt(
        np.maximum(
            test_sq.astype(np.float64)[:, :, None] * sq.astype(np.float64)[:, None, :], NORM_EPS
        )
    )
    return np.einsum("c,cpn->pn", lr, cos)


register(
    Method(
        name="less",
        description="LESS: lr-weighted cosine of test and Adam-preconditioned training "
        "gradients (llm runs)",
        score=less,
        cost="main",
        order=5,
    )
)
