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

from fine_cli.errors import InputFileError

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
    labels: np.ndarray | None = None  # (n,) observed training labels
    # Out-of-fold predicted probabilities (confident; fine_cli/crossval.py), K classes:
    oof_probs: np.ndarray | None = None  # (n, K)
    # Per checkpoint, with collect.heldout / collect.moments (rb, --checkpoints auto):
    heldout_loss: np.ndarray | None = None  # (C,) main model's mean loss on held-out points
    ip2: np.ndarray | None = None  # (C, R, 2, n) main model: sum_{j in batch} <g, g_j>^2
    # LESS (estimators/less.py), main model, m' test prompts grouped into the queries:
    less_gram: np.ndarray | None = None  # (C, m', n) <g(q'), Gamma(z)>, Gamma: Adam-preconditioned
    less_sqnorm: np.ndarray | None = None  # (C, n) ||Gamma(z)||^2
    less_test_sqnorm: np.ndarray | None = None  # (C, m') ||g(q')||^2
    less_query: np.ndarray | None = None  # (m',) the query each test prompt belongs to

    @property
    def n_train(self) -> int:
        return int(self.sqnorm.shape[-1])

    @property
    def population(self) -> int:
        """n of the whole training set, which the probe batches are drawn from; a view of
        a slice of the points (fine_cli/stages/estimate_stream.py) has more than n_train."""
        return self.n_train

    @property
    def has_aux(self) -> bool:
        """Whether the auxiliary model was trained (M = 2); without it O_hat is not known."""
        return int(self.sqnorm.shape[0]) > AUX

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

    def probe_slots(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Every probe-batch slot that holds one of this view's points: its checkpoint,
        repeat and side, and the point's position among the n_train, four (E,) arrays."""
        ci, ri, ki, _ = np.indices(self.probe_idx.shape)
        return ci.ravel(), ri.ravel(), ki.ravel(), np.asarray(self.probe_idx).ravel()

    def probe_counts(self) -> np.ndarray:
        """(C, R, 2, n) how many times each training point appears in each probe batch."""
        c, r, two, _ = self.probe_idx.shape
        counts = np.zeros((c, r, two, self.n_train), dtype=np.float64)
        np.add.at(counts, self.probe_slots(), 1.0)
        return counts


def probe_entries(sig: SignalView, side: int) -> tuple[np.ndarray, ...]:
    """The non-zero entries of ``sig.probe_counts()[:, :, side]``, once each: checkpoint,
    repeat and point indices and the count, four (E,) arrays. A probe batch holds b of
    the n points, so the corrections that S's own appearances call for touch C*R*b entries,
    not C*R*n."""
    ci, ri, ki, ji = sig.probe_slots()
    on = ki == side
    shape = (sig.n_checkpoints, sig.n_repeats, sig.n_train)
    (ci, ri, ji), counts = _distinct((ci[on], ri[on], ji[on]), shape)
    return ci, ri, ji, counts


def _distinct(
    index: tuple[np.ndarray, ...], shape: tuple[int, ...]
) -> tuple[tuple[np.ndarray, ...], np.ndarray]:
    """The distinct index tuples among ``index`` (arrays into ``shape``), in C order, and
    how many times each occurs (float64)."""
    keys, counts = np.unique(np.ravel_multi_index(index, shape), return_counts=True)
    return np.unravel_index(keys, shape), counts.astype(np.float64)


def self_samples(sig: SignalView) -> tuple[np.ndarray, np.ndarray]:
    """Self mode (q = z_i, S = {z_i}): X = O~, Y = O~', each (n, C*R) float64.

    With k z's count in a probe batch (0 for all but b of the n points), s = ||g(z)||^2
    and ip its inner product with the batch's sum:

        O = (ip - k s + s) / (b - k + 1),    O' = (ip - k s) / max(b - k, 1)

    computed for k = 0 over all points, then redone at the entries where k > 0 (the same
    arithmetic as on the whole (C, R, n) array, entry for entry)."""
    b = float(sig.probe_idx.shape[-1])
    on_b, on_bp = probe_entries(sig, B), probe_entries(sig, B_PRIME)

    def with_s(m: int) -> np.ndarray:
        # <g(q), sum_{B \ S} g + sum_S g> / (|B \ S| + |S|) with S = {q}
        out = np.add(sig.ip[m, :, :, B], sig.sqnorm[m][:, None, :], dtype=np.float64)
        out /= b + 1.0
        ci, ri, ji, k = on_b
        ip, sq = (
            sig.ip[m, ci, ri, B, ji].astype(np.float64),
            sig.sqnorm[m, ci, ji].astype(np.float64),
        )
        out[ci, ri, ji] = (ip - k * sq + sq) / (b - k + 1.0)
        return out

    o = with_s(MAIN)
    o_prime = sig.ip[MAIN, :, :, B_PRIME].astype(np.float64)  # (C, R, n)
    o_prime /= max(b, 1.0)
    ci, ri, ji, k = on_bp
    ip = sig.ip[MAIN, ci, ri, B_PRIME, ji].astype(np.float64)
    o_prime[ci, ri, ji] = (ip - k * sig.sqnorm[MAIN, ci, ji].astype(np.float64)) / np.maximum(
        b - k, 1.0
    )
    # without the auxiliary model X = O and Y = O': only D = X - Y (paired) is meaningful
    if sig.has_aux:
        o_hat = with_s(AUX)
        o -= o_hat
        o_prime -= o_hat
    return o.reshape(-1, sig.n_train).T, o_prime.reshape(-1, sig.n_train).T  # (n, C*R)


def _finite_population(n_pool: np.ndarray | float, b: float) -> np.ndarray | float:
    """(N - b) / (N - 1): the variance factor of a sum of b draws without replacement."""
    return np.maximum(n_pool - b, 0.0) / np.maximum(n_pool - 1.0, 1.0)


def self_moments(sig: SignalView) -> tuple[np.ndarray, np.ndarray]:
    """Self mode: the mean m and variance v of D_c = O_c - O'_c over the random probe
    batches, given checkpoint c, each (n, C) float64 (docs/statistics.md, section 3b).

    With s = ||g(z)||^2 and, over the other points j, mu1 = mean <g(z), g(z_j)> and
    sigma2 = var <g(z), g(z_j)>, for B and B' drawn from the data without z:

        m = (s - mu1) / (b + 1)
        v = sigma2 * f * (b / (b + 1)^2 + 1 / b),    f = (N - b) / (N - 1), N = n - 1

    mu1 and sigma2 come from the probe batches' points themselves (their inner products
    ``ip`` and squared inner products ``ip2`` with g(z), z's own terms removed), so one
    probe pair gives them; the auxiliary model is not used.
    """
    if sig.ip2 is None:
        raise InputFileError(
            "estimator 'rb' needs the probe batches' second moments (array 'ip2'), which "
            "these signals lack; re-run train-collect with collect.moments=true (the default "
            "when estimate.estimator is rb), or use --estimator paired."
        )
    b = float(sig.probe_idx.shape[-1])
    n_pool = float(sig.population - 1)
    all_drawn = b * 2 * sig.n_repeats  # probe points per checkpoint, z's own included
    # z's own appearances in the 2R batches, where there are any: (E,) entries of (C, n)
    ci, _, _, ji = sig.probe_slots()
    (ci, ji), drawn = _distinct((ci, ji), (sig.n_checkpoints, sig.n_train))
    # four (C, n) arrays, updated in place (fresh memory is slow to fault in)
    s = sig.sqnorm[MAIN].astype(np.float64)
    sum1 = sig.ip[MAIN].sum(axis=(1, 2), dtype=np.float64)  # over the 2R batches
    sum2 = sig.ip2.sum(axis=(1, 2), dtype=np.float64)
    # less z's own terms (k s and k s^2), divided by the count of the other points drawn
    own = s[ci, ji]
    others = np.maximum(all_drawn - drawn, 1.0)
    mu1_own = (sum1[ci, ji] - drawn * own) / others
    ex2_own = (sum2[ci, ji] - drawn * own**2) / others
    sum1 /= max(all_drawn, 1.0)
    sum1[ci, ji] = mu1_own  # now mu1
    sum2 /= max(all_drawn, 1.0)
    sum2[ci, ji] = ex2_own  # now the mean of ip^2
    work = np.square(sum1)
    sum2 -= work
    np.maximum(sum2, 0.0, out=sum2)  # var1
    s -= sum1
    s /= b + 1.0  # m
    sum2 *= _finite_population(n_pool, b)
    sum2 *= b / (b + 1.0) ** 2 + 1.0 / b  # v
    m, v = s, sum2
    return m.T, v.T


def query_moments(sig: SignalView, queries: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Test mode: m and v of D_c for every (query, subset) pair, each (q, G, C) float64.

    As in self mode, with a_j = <g(q), g(z_j)>, A_S = sum_{j in S} a_j and s_S = |S|:

        m = (A_S - s_S mu) / (b + s_S)
        v = sigma2 * f * (b / (b + s_S)^2 + 1 / b),    f = (N - b) / (N - 1), N = n - s_S

    with mu and sigma2 the mean and variance of a_j over the probe batches' points outside
    S (read from the Gram block), so that self mode is the diagonal of test mode.
    """
    assert sig.gram is not None
    b = float(sig.probe_idx.shape[-1])
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)  # (n, G)
    size = np.diff(ptr).astype(np.float64)  # (G,)
    k = sig.probe_counts().sum(axis=(1, 2))  # (C, n) draws of each point over all batches
    a = sig.gram[MAIN][:, queries or slice(None)].astype(np.float64)  # (C, q, n)
    a_s = _times(a, mem)  # (C, q, G) A_S
    ka, ka2 = k[:, None, :] * a, k[:, None, :] * a * a  # (C, q, n)
    # sums over the probe points outside S: all probe points minus S's members among them
    sum1 = ka.sum(axis=-1, keepdims=True) - _times(ka, mem)
    sum2 = ka2.sum(axis=-1, keepdims=True) - _times(ka2, mem)
    count = k.sum(axis=-1)[:, None, None] - _times(k[:, None, :], mem)  # (C, 1, G)
    mu = sum1 / np.maximum(count, 1.0)
    var = np.maximum(sum2 / np.maximum(count, 1.0) - mu**2, 0.0)
    n_pool = sig.n_train - size  # (G,)
    m = (a_s - size * mu) / (b + size)
    v = var * _finite_population(n_pool, b) * (b / (b + size) ** 2 + 1.0 / b)
    return m.transpose(1, 2, 0), v.transpose(1, 2, 0)


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
    o_hat = with_s(AUX) if sig.has_aux else 0.0
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
        labels=sig.labels,
        oof_probs=sig.oof_probs,  # cross-validation has no checkpoint axis either
        heldout_loss=cut(sig.heldout_loss, 0),
        ip2=cut(sig.ip2, 0),
        less_gram=cut(sig.less_gram, 0),
        less_sqnorm=cut(sig.less_sqnorm, 0),
        less_test_sqnorm=cut(sig.less_test_sqnorm, 0),
        less_query=sig.less_query,
    )


def auto_window(heldout_loss: np.ndarray) -> int:
    """K of ``--checkpoints auto``: the checkpoints up to the (first) minimum of the main
    model's held-out loss (C,). Past it the model fits the training labels at the expense
    of held-out points, memorising the flipped ones, and the late checkpoints add more
    noise than signal to every method (docs/statistics.md, section 3c); a user can see it
    without knowing which labels are wrong."""
    return int(np.argmin(heldout_loss)) + 1


def resolve_window(sig: SignalView, checkpoints: int | str | None) -> int | None:
    """The first-K cut of ``checkpoints`` (an int, "auto" or None = all) on ``sig``; auto
    falls back to all checkpoints when the signals did not record the held-out loss."""
    if checkpoints == "auto":
        return None if sig.heldout_loss is None else auto_window(sig.heldout_loss)
    if isinstance(checkpoints, str):
        raise ValueError(f"checkpoints must be an int, 'auto' or None, got {checkpoints!r}")
    return checkpoints


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

    o_hat = without_s(AUX, B) if sig.has_aux else 0.0
    x = (without_s(MAIN, B) - o_hat).reshape(-1, sig.n_train).T  # (n, C*R)
    y = (without_s(MAIN, B_PRIME) - o_hat).reshape(-1, sig.n_train).T
    return x, y
