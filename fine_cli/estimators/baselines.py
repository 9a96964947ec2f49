"""Baselines computed from the same signals as f-INE, at no extra training cost.

- TracIn (Pruthi et al. 2020): sum over checkpoints of lr_c * <g_c(q), g_c(z)>, main model.
  Self mode: sum_c lr_c * ||g_c(z)||^2. A subset's score is the sum over its members.
- grad-cos (LESS-style): lr-weighted mean over checkpoints of cos(g_c(q), g_c(z)); a
  subset's score is the mean over its members. In self mode cos(g, g) = 1 says nothing,
  so the score is the disagreement of z's gradient with the rest of the data:
  -cos(g_c(z), sum_{j in B \\ {z}} g_c(z_j)) over both probe batches (docs/DECISIONS.md).
- loss: the main model's loss of the subset's members at the last checkpoint (mean over
  members); the same for every query.
- margin: minus the main model's margin (true-class logit minus the best other logit) at
  the last checkpoint, mean over members; the same for every query. A point the model
  fits against its label has a negative margin, hence a high score.
Signs: larger = more influential (self mode: more suspicious), as for f-INE.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_cli.estimators.samples import MAIN, SignalView, _times, membership
from fine_cli.registry import Method, register

# Guards divisions by a zero gradient norm (a point fitted exactly).
NORM_EPS = 1e-30


def _lr_weights(sig: SignalView) -> np.ndarray:
    lr = sig.lr.astype(np.float64)
    return lr / lr.sum()


def tracin(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) TracIn scores."""
    lr = sig.lr.astype(np.float64)
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)
    if sig.mode == "self":
        per_point = np.einsum("c,cn->n", lr, sig.sqnorm[MAIN].astype(np.float64))
        # Self-influence of a group: sum of its members' self-influences.
        return _times(per_point[None, :], mem)
    assert sig.gram is not None
    gram = sig.gram[MAIN][:, queries or slice(None)].astype(np.float64)  # (C, q, n)
    return _times(np.einsum("c,cqn->qn", lr, gram), mem)


def grad_cos(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) gradient-cosine scores."""
    w = _lr_weights(sig)
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)
    size = np.diff(ptr).astype(np.float64)
    sq = sig.sqnorm[MAIN].astype(np.float64)  # (C, n)
    if sig.mode == "self":
        per_point = _self_disagreement(sig)  # (C, n)
        return _times(np.einsum("c,cn->n", w, per_point)[None, :], mem) / size
    assert sig.gram is not None and sig.test_sqnorm is not None
    qs = queries or slice(None)
    gram = sig.gram[MAIN][:, qs].astype(np.float64)  # (C, q, n)
    tq = sig.test_sqnorm[MAIN][:, qs].astype(np.float64)  # (C, q)
    cos = gram / np.sqrt(np.maximum(tq[:, :, None] * sq[:, None, :], NORM_EPS))
    return _times(np.einsum("c,cqn->qn", w, cos), mem) / size


def _self_disagreement(sig: SignalView) -> np.ndarray:
    """(C, n) -cos(g(z), probe-batch sum without z), averaged over probe batches."""
    k = sig.probe_counts()  # (C, R, 2, n)
    sq = sig.sqnorm[MAIN].astype(np.float64)[:, None, None, :]  # (C, 1, 1, n)
    ip = sig.ip[MAIN].astype(np.float64)  # (C, R, 2, n)
    bsq = sig.probe_sqnorm[MAIN].astype(np.float64)[..., None]  # (C, R, 2, 1)
    ip_ex = ip - k * sq  # <g(z), G - k g(z)>
    rest_sq = np.maximum(bsq - 2.0 * k * ip + k * k * sq, 0.0)  # ||G - k g(z)||^2
    cos = ip_ex / np.sqrt(np.maximum(rest_sq * sq, NORM_EPS))
    return -cos.mean(axis=(1, 2))


def loss(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) last-checkpoint training loss of each subset (mean over members)."""
    return _last_checkpoint_mean(sig, sig.loss[MAIN, -1], queries)


def margin(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(q, G) minus the last-checkpoint margin of each subset (mean over members)."""
    return _last_checkpoint_mean(sig, -sig.margin[MAIN, -1].astype(np.float64), queries)


def _last_checkpoint_mean(
    sig: SignalView, per_point: np.ndarray, queries: slice | None
) -> np.ndarray:
    """(q, G): the mean of ``per_point`` ``(n,)`` over each subset, the same for every query."""
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)
    values = per_point.astype(np.float64)[None, :]
    scores = _times(values, mem) / np.diff(ptr).astype(np.float64)
    n_q = 1 if sig.mode == "self" else len(range(sig.n_queries)[queries or slice(None)])
    return np.repeat(scores, n_q, axis=0)


for _method in (
    Method(
        name="tracin",
        description="TracIn: sum over checkpoints of lr * gradient dot product",
        score=tracin,
        cost="main",
        order=1,
    ),
    Method(
        name="grad-cos",
        description="LESS-style mean gradient cosine (self mode: disagreement with the data)",
        score=grad_cos,
        cost="main",
        order=2,
    ),
    Method(
        name="loss",
        description="training loss at the last checkpoint",
        score=loss,
        cost="main-train",
        order=3,
    ),
    Method(
        name="margin",
        description="minus the margin (label logit - best other logit) at the last checkpoint",
        score=margin,
        cost="main-train",
        order=4,
    ),
):
    register(_method)
