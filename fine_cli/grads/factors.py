"""Per-sample gradients of one layer, kept in factored form, and the sums they answer.

A factor describes the per-sample gradients of one layer's trainable parameters for a
chunk of ``n`` samples without (necessarily) building them:

- :class:`OuterFactor`: ``W_i = sum_p D[i, p]^T A[i, p]``, shape ``(d_out, d_in)``, for
  Linear (``p`` runs over sequence positions) and Conv2d (``p`` over output positions,
  ``A`` the unfolded input). A trainable bias is folded in as a column of ones in ``A``.
- :class:`MaterialFactor`: the per-sample gradients themselves, ``(n, d)``, for layers
  whose parameters are few (BatchNorm, LayerNorm, GroupNorm) and for the fallback.
- :class:`EmbeddingFactor`: ``W_i = sum_t e_{idx[i, t]} D[i, t]^T``, by index matching.

Each factor answers ``sqnorm_ips`` (squared norms and inner products with ``K`` fixed
vectors) and ``gram`` (inner products with the gradients of another chunk of the same
layer). Work is done in blocks of samples sized so that temporaries stay below
``work_bytes``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

Rows = Callable[[int, int], tuple[Tensor, Tensor]]


class Factor(Protocol):
    """What the engine needs from one layer's per-sample gradients of a chunk."""

    @property
    def n(self) -> int:
        """Samples in the chunk."""
        ...

    @property
    def dtype(self) -> torch.dtype:
        """Element type of the gradients (the model's)."""
        ...

    def vector(self, named: dict[str, Tensor]) -> Tensor:
        """One parameter-space vector of this layer, laid out as :meth:`sqnorm_ips` wants."""
        ...

    def sqnorm_ips(self, vs: Tensor | None, work_bytes: int) -> tuple[Tensor, Tensor]:
        """``(n,)`` squared norms and ``(K, n)`` inner products with ``vs`` (stacked vectors)."""
        ...

    def gram(self, other: Factor, work_bytes: int) -> Tensor:
        """``(n, other.n)`` inner products between this chunk's and ``other``'s gradients."""
        ...


def rows_per_block(work_bytes: int, bytes_per_row: int, n: int) -> int:
    """How many samples fit in ``work_bytes`` of temporaries (at least one, at most ``n``)."""
    return max(1, min(n, work_bytes // max(1, bytes_per_row)))


def _spans(n: int, step: int) -> list[tuple[int, int]]:
    return [(s, min(n, s + step)) for s in range(0, n, step)]


def _block_pairs(
    out: Tensor,
    spans_a: list[tuple[int, int]],
    spans_b: list[tuple[int, int]],
    make_a: Callable[[int, int], tuple[Tensor, ...]],
    make_b: Callable[[int, int], tuple[Tensor, ...]],
    combine: Callable[[tuple[Tensor, ...], tuple[Tensor, ...]], Tensor],
) -> Tensor:
    """Fill ``out`` block by block; a single B block is built once, not once per A block."""
    cached = make_b(*spans_b[0]) if len(spans_b) == 1 else None
    for a0, a1 in spans_a:
        blk_a = make_a(a0, a1)
        for b0, b1 in spans_b:
            blk_b = cached if cached is not None else make_b(b0, b1)
            out[a0:a1, b0:b1] = combine(blk_a, blk_b)
    return out


@dataclass
class MaterialFactor:
    """Per-sample gradients built explicitly: ``grads`` is ``(n, d)``.

    ``names`` are the parameter names in the order their flattened values fill ``d``.
    """

    grads: Tensor
    names: tuple[str, ...]

    @property
    def n(self) -> int:
        return self.grads.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.grads.dtype

    def vector(self, named: dict[str, Tensor]) -> Tensor:
        return torch.cat([named[k].reshape(-1) for k in self.names])

    def sqnorm_ips(self, vs: Tensor | None, work_bytes: int) -> tuple[Tensor, Tensor]:
        g = self.grads
        ips = vs @ g.T if vs is not None else g.new_zeros(0, self.n)
        return (g * g).sum(1), ips

    def gram(self, other: Factor, work_bytes: int) -> Tensor:
        assert isinstance(other, MaterialFactor)
        return self.grads @ other.grads.T


def _prefer_materialise(positions: int, d_in: int, d_out: int, k: int) -> bool:
    """Flop estimate for one sample: build ``W_i`` or work with the ``(P, P)`` Gram matrices.

    Building costs ``P d_in d_out`` and then ``d_in d_out`` per product; the Gram route costs
    ``P^2 (d_in + d_out)`` for the norm and ``P d_in d_out`` per vector.
    """
    gram = positions * positions * (d_in + d_out) + k * positions * d_in * d_out
    build = positions * d_in * d_out + (k + 1) * d_in * d_out
    return build < gram


@dataclass
class OuterFactor:
    """``W_i = sum_p D[i, p]^T A[i, p]`` with ``A`` ``(n, P, d_in)`` and ``D`` ``(n, P, d_out)``.

    ``rows(start, stop)`` returns ``(A, D)`` for those samples; ``A`` already carries a
    trailing column of ones when the bias is trainable, so ``W_i``'s last column is the
    bias gradient. ``names`` is ``("weight", "bias")`` or the trainable subset of it.
    """

    n: int
    positions: int
    d_in: int
    d_out: int
    rows: Rows
    names: tuple[str, ...]
    dtype: torch.dtype
    device: torch.device

    def vector(self, named: dict[str, Tensor]) -> Tensor:
        """``(d_out, d_in)``: the weight reshaped, then the bias as the last column."""
        parts = []
        if "weight" in self.names:
            parts.append(named["weight"].reshape(self.d_out, -1))
        if "bias" in self.names:
            parts.append(named["bias"].reshape(self.d_out, 1))
        return torch.cat(parts, 1)

    def materialise(self, a: Tensor, d: Tensor) -> Tensor:
        """``(s, d_out * d_in)`` per-sample gradients from ``A`` ``(s, P, d_in)``, ``D``."""
        return (d.transpose(1, 2) @ a).flatten(1)

    def sqnorm_ips(self, vs: Tensor | None, work_bytes: int) -> tuple[Tensor, Tensor]:
        k = 0 if vs is None else vs.shape[0]
        p, di, do = self.positions, self.d_in, self.d_out
        build = _prefer_materialise(p, di, do, k)
        per_row = p * (di + do) + (di * do if build else 2 * p * p + p * k * do)
        step = rows_per_block(work_bytes, per_row * self.dtype.itemsize, self.n)
        sq, ips = [], []
        for s0, s1 in _spans(self.n, step):
            a, d = self.rows(s0, s1)
            if build:
                g = self.materialise(a, d)
                sq.append((g * g).sum(1))
                if vs is not None:
                    ips.append(vs.flatten(1) @ g.T)
                continue
            if p == 1:  # ||d a^T||^2 = ||d||^2 ||a||^2: no (P, P) matrices needed
                sq.append((a * a).sum((1, 2)) * (d * d).sum((1, 2)))
            else:
                sq.append(((a @ a.transpose(1, 2)) * (d @ d.transpose(1, 2))).sum((1, 2)))
            if vs is not None:
                # <W_i, V> = sum_p D_p . (V A_p): one matmul against all K vectors at once
                av = (a @ vs.reshape(k * do, di).T).view(s1 - s0, p, k, do)
                ips.append(torch.einsum("spkd,spd->ks", av, d))
        empty = torch.zeros(k, self.n, dtype=self.dtype, device=self.device)
        return torch.cat(sq), torch.cat(ips, 1) if ips else empty

    def gram(self, other: Factor, work_bytes: int) -> Tensor:
        assert isinstance(other, OuterFactor)
        na, nb, pa, pb = self.n, other.n, self.positions, other.positions
        di, do = self.d_in, self.d_out
        elt = self.dtype.itemsize
        out = torch.zeros(na, nb, dtype=self.dtype, device=self.device)
        gram_cost = na * nb * pa * pb * (di + do)
        build_cost = (na * pa + nb * pb) * di * do + na * nb * di * do
        if build_cost < gram_cost:
            step = rows_per_block(work_bytes // 2, (di * do + max(pa, pb) * (di + do)) * elt, na)
            step_b = min(nb, step)

            def build_a(s0: int, s1: int) -> tuple[Tensor, ...]:
                return (self.materialise(*self.rows(s0, s1)),)

            def build_b(s0: int, s1: int) -> tuple[Tensor, ...]:
                return (other.materialise(*other.rows(s0, s1)),)

            return _block_pairs(
                out,
                _spans(na, step),
                _spans(nb, step_b),
                build_a,
                build_b,
                lambda x, y: x[0] @ y[0].T,
            )
        # (sa P_a, sb P_b) products of both factors, three such matrices alive at once
        pair = 3 * pa * pb * elt
        sa = min(na, max(1, math.isqrt(max(1, work_bytes // pair))))
        sb = min(nb, max(1, work_bytes // (pair * sa)))

        def combine(x: tuple[Tensor, ...], y: tuple[Tensor, ...]) -> Tensor:
            (xa, xd), (ya, yd) = x, y
            m = (xa.reshape(-1, di) @ ya.reshape(-1, di).T) * (
                xd.reshape(-1, do) @ yd.reshape(-1, do).T
            )
            return m.view(xa.shape[0], pa, ya.shape[0], pb).sum((1, 3))

        return _block_pairs(out, _spans(na, sa), _spans(nb, sb), self.rows, other.rows, combine)


@dataclass
class EmbeddingFactor:
    """``W_i = sum_t e_{idx[i, t]} D[i, t]^T``: ``idx`` ``(n, T)``, ``D`` ``(n, T, dim)``.

    Rows of ``D`` at the padding index are already zero; ``num_rows`` is the table size.
    """

    idx: Tensor
    delta: Tensor
    num_rows: int

    @property
    def n(self) -> int:
        return self.idx.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.delta.dtype

    def vector(self, named: dict[str, Tensor]) -> Tensor:
        return named["weight"]

    def sqnorm_ips(self, vs: Tensor | None, work_bytes: int) -> tuple[Tensor, Tensor]:
        t, dim = self.delta.shape[1], self.delta.shape[2]
        k = 0 if vs is None else vs.shape[0]
        per_row = (2 * t * t + (k + 1) * t * dim) * self.dtype.itemsize
        sq, ips = [], []
        for s0, s1 in _spans(self.n, rows_per_block(work_bytes, per_row, self.n)):
            i, d = self.idx[s0:s1], self.delta[s0:s1]
            # rows hit by the same index add up before squaring: the cross terms are these
            same = i[:, :, None] == i[:, None, :]
            sq.append(((d @ d.transpose(1, 2)) * same).sum((1, 2)))
            if vs is not None:
                ips.append((vs[:, i] * d).sum((2, 3)))
        empty = self.delta.new_zeros(k, self.n)
        return torch.cat(sq), torch.cat(ips, 1) if ips else empty

    def gram(self, other: Factor, work_bytes: int) -> Tensor:
        assert isinstance(other, EmbeddingFactor)
        ta, tb = self.idx.shape[1], other.idx.shape[1]
        pair = 3 * ta * tb * self.dtype.itemsize
        sa = min(self.n, max(1, math.isqrt(max(1, work_bytes // pair))))
        sb = min(other.n, max(1, work_bytes // (pair * sa)))

        def take(f: EmbeddingFactor) -> Callable[[int, int], tuple[Tensor, ...]]:
            return lambda s0, s1: (f.idx[s0:s1], f.delta[s0:s1])

        def combine(x: tuple[Tensor, ...], y: tuple[Tensor, ...]) -> Tensor:
            (xi, xd), (yi, yd) = x, y
            dim = xd.shape[2]
            same = xi.reshape(-1, 1) == yi.reshape(1, -1)
            m = (xd.reshape(-1, dim) @ yd.reshape(-1, dim).T) * same
            return m.view(xi.shape[0], ta, yi.shape[0], tb).sum((1, 3))

        out = self.delta.new_zeros(self.n, other.n)
        return _block_pairs(
            out, _spans(self.n, sa), _spans(other.n, sb), take(self), take(other), combine
        )
