"""Algorithm 1's samples O~ (with S) and O~' (without S), rebuilt from stored components.

The signals file stores, per model and checkpoint, inner products of every point's
gradient with the *whole* probe-batch sums, and squared norms / Gram blocks. Removing
the members of S that fell into a probe batch is exact arithmetic on those components
(ALGORITHM.md, "Decision: ... subtract its term"), done here for all subsets at once.

Dimension names: M models (0 main, 1 auxiliary), C checkpoints, R probe pairs,
b probe batch size, n training points, m queries (test points), G subsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse

MAIN, AUX = 0, 1
B, B_PRIME = 0, 1


@dataclass
class SignalView:
    """The numeric content of a signals artifact, without any I/O."""

    mode: str  # "self" or "test"
    lr: np.ndarray  # (C,)
    probe_idx: np.ndarray  # (C, R, 2, b) positions of probe batches
    sqnorm: np.ndarray  # (M, C, n)
    ip: np.ndarray  # (M, C, R, 2, n)
    probe_sqnorm: np.ndarray  # (M, C, R, 2)
    loss: np.ndarray  # (M, C, n)
    margin: np.ndarray  # (M, C, n)
    test_ip: np.ndarray | None = None  # (M, C, R, 2, m)
    test_sqnorm: np.ndarray | None = None  # (M, C, m)
    gram: np.ndarray | None = None  # (M, C, m, n)
    group_ptr: np.ndarray | None = None  # (G+1,)
    group_members: np.ndarray | None = None  # (total,)
    # Projected features at the last checkpoint (trak, if; fine_cli/features.py), E models:
    proj_grad: np.ndarray | None = None  # (E, n, k) sketch of grad log(p / (1 - p))
    one_minus_p: np.ndarray | None = None  # (E, n)
    ggn: np.ndarray | None = None  # (k, k) main model's Gauss-Newton curvature, sketched
    test_proj_grad: np.ndarray | None = None  # (E, m, k)
    test_one_minus_p: np.ndarray | None = None  # (E, m)

    @property
    def n_train(self) -> int:
        return int(self.sqnorm.shape[-1])

    @property
    def n_checkpoints(self) -> int:
        return int(self.sqnorm.shape[1])

    @property
    def n_repeats(self) -> int:
        return int(self.probe_idx.shape[1])

    @property
    def n_queries(self) -> int:
        return 1 if self.mode == "self" else int(self.gram.shape[2])  # type: ignore[union-attr]

    @property
    def n_samples(self) -> int:
        """N: samples per distribution, one per (checkpoint, probe pair)."""
        return self.n_checkpoints * self.n_repeats

    def groups(self) -> tuple[np.ndarray, np.ndarray]:
        """CSR (ptr (G+1,), members (total,)); singletons when no groups were given."""
        if self.group_ptr is None or self.group_members is None:
            n = self.n_train
            return np.arange(n + 1, dtype=np.int64), np.arange(n, dtype=np.int64)
        return self.group_ptr, self.group_members

    @property
    def n_subsets(self) -> int:
        return int(self.groups()[0].shape[0] - 1)

    def probe_counts(self) -> np.ndarray:
        """(C, R, 2, n) how many times each training point appears in each probe batch."""
        c, r, two, _ = self.probe_idx.shape
        counts = np.zeros((c, r, two, self.n_train), dtype=np.float64)
        ci, ri, ki, _ = np.indices(self.probe_idx.shape)
        np.add.at(counts, (ci, ri, ki, self.probe_idx), 1.0)
        return counts


def self_samples(sig: SignalView) -> tuple[np.ndarray, np.ndarray]:
    """Self mode (q = z_i, S = {z_i}): X = O~, Y = O~', each (n, C*R) float64."""
    b = float(sig.probe_idx.shape[-1])
    k = sig.probe_counts()  # (C, R, 2, n)
    k_b, k_bp = k[:, :, B], k[:, :, B_PRIME]  # (C, R, n)
    sq = sig.sqnorm.astype(np.float64)[:, :, None, :]  # (M, C, 1, n)
    ip = sig.ip.astype(np.float64)  # (M, C, R, 2, n)

    def with_s(m: int) -> np.ndarray:
        # <g(q), sum_{B \ S} g + sum_S g> / (|B \ S| + |S|) with S = {q}
        return (ip[m, :, :, B] - k_b * sq[m] + sq[m]) / (b - k_b + 1.0)

    o = with_s(MAIN)
    o_hat = with_s(AUX)
    o_prime = (ip[MAIN, :, :, B_PRIME] - k_bp * sq[MAIN]) / np.maximum(b - k_bp, 1.0)
    x = (o - o_hat).reshape(-1, sig.n_train).T  # (n, C*R)
    y = (o_prime - o_hat).reshape(-1, sig.n_train).T
    return x, y


def membership(ptr: np.ndarray, members: np.ndarray, n: int) -> sparse.csr_matrix:
    """(n, G) sparse 0/1 matrix of subset membership (counts if a point repeats)."""
    g = ptr.shape[0] - 1
    cols = np.repeat(np.arange(g), np.diff(ptr))
    ones = np.ones(members.shape[0], dtype=np.float64)
    return sparse.csr_matrix((ones, (members, cols)), shape=(n, g))


def _times(dense: np.ndarray, mat: sparse.csr_matrix) -> np.ndarray:
    """(..., n) @ (n, G) -> (..., G) for a sparse right factor."""
    lead = dense.shape[:-1]
    out = np.asarray(mat.T.dot(dense.reshape(-1, dense.shape[-1]).T).T)
    return out.reshape(*lead, mat.shape[1])


def query_samples(sig: SignalView, queries: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test mode: X = O~, Y = O~' for every (query, subset) pair, each (q, G, C*R) float64."""
    assert sig.gram is not None and sig.test_ip is not None
    queries = queries or slice(None)
    b = float(sig.probe_idx.shape[-1])
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)  # (n, G)
    size = np.diff(ptr).astype(np.float64)  # (G,) |S|
    k = sig.probe_counts()  # (C, R, 2, n)
    k_s = _times(k, mem)  # (C, R, 2, G) |B ∩ S|
    gram = sig.gram[:, :, queries].astype(np.float64)  # (M, C, q, n)
    tip = sig.test_ip[:, :, :, :, queries].astype(np.float64)  # (M, C, R, 2, q)
    s_sum = _times(gram, mem)  # (M, C, q, G): sum_{j in S} <g(q), g(z_j)>
    # sum over the members of S inside each probe batch: (M, C, R, 2, q, G)
    s_in = _times(gram[:, :, None, None, :, :] * k[None, :, :, :, None, :], mem)

    def with_s(m: int) -> np.ndarray:  # (C, R, q, G)
        num = tip[m, :, :, B, :, None] - s_in[m, :, :, B] + s_sum[m][:, None]
        den = b - k_s[:, :, B, None, :] + size
        return num / den

    o = with_s(MAIN)
    o_hat = with_s(AUX)
    num_p = tip[MAIN, :, :, B_PRIME, :, None] - s_in[MAIN, :, :, B_PRIME]
    # |B' \ S| = 0 only when S swallows a whole probe batch; the sum is then empty (0).
    o_prime = num_p / np.maximum(b - k_s[:, :, B_PRIME, None, :], 1.0)
    c, r, q, g = o.shape
    x = (o - o_hat).reshape(c * r, q, g).transpose(1, 2, 0)  # (q, G, C*R)
    y = (o_prime - o_hat).reshape(c * r, q, g).transpose(1, 2, 0)
    return x, y


def first_checkpoints(sig: SignalView, k: int) -> SignalView:
    """The same signals restricted to the first k checkpoints (every per-checkpoint array)."""
    if not 1 <= k <= sig.n_checkpoints:
        raise ValueError(f"k must lie in [1, {sig.n_checkpoints}], got {k}")
    c = slice(0, k)

    def cut(a: np.ndarray | None, axis: int) -> np.ndarray | None:
        if a is None:
            return None
        index: list[slice] = [slice(None)] * a.ndim
        index[axis] = c
        return a[tuple(index)]

    return SignalView(
        mode=sig.mode,
        lr=sig.lr[c],
        probe_idx=sig.probe_idx[c],
        sqnorm=sig.sqnorm[:, c],
        ip=sig.ip[:, c],
        probe_sqnorm=sig.probe_sqnorm[:, c],
        loss=sig.loss[:, c],
        margin=sig.margin[:, c],
        test_ip=cut(sig.test_ip, 1),
        test_sqnorm=cut(sig.test_sqnorm, 1),
        gram=cut(sig.gram, 1),
        group_ptr=sig.group_ptr,
        group_members=sig.group_members,
        # trak / if features are taken after the last epoch; they have no checkpoint axis
        proj_grad=sig.proj_grad,
        one_minus_p=sig.one_minus_p,
        ggn=sig.ggn,
        test_proj_grad=sig.test_proj_grad,
        test_one_minus_p=sig.test_one_minus_p,
    )


def self_null_samples(sig: SignalView) -> tuple[np.ndarray, np.ndarray]:
    """Self mode with S's own term left out of O and O_hat: X, Y (n, C*R) float64.

    Then both sides are "without S" (B \\ S against B' \\ S, with O_hat on B \\ S), so every
    point has no effect by construction: real signals on which a test must not reject,
    the calibration data of docs/statistics.md.
    """
    b = float(sig.probe_idx.shape[-1])
    k = sig.probe_counts()  # (C, R, 2, n)
    sq = sig.sqnorm.astype(np.float64)[:, :, None, :]  # (M, C, 1, n)
    ip = sig.ip.astype(np.float64)  # (M, C, R, 2, n)

    def without_s(m: int, side: int) -> np.ndarray:  # (C, R, n)
        k_side = k[:, :, side]
        return (ip[m, :, :, side] - k_side * sq[m]) / np.maximum(b - k_side, 1.0)

    o_hat = without_s(AUX, B)
    x = (without_s(MAIN, B) - o_hat).reshape(-1, sig.n_train).T  # (n, C*R)
    y = (without_s(MAIN, B_PRIME) - o_hat).reshape(-1, sig.n_train).T
    return x, y
