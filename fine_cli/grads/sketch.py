"""Count-sketch of per-sample gradients to ``k`` dimensions, seeded and reproducible.

Each gradient coordinate ``j`` is added, with a random sign ``s(j)``, into bucket ``h(j)``
of ``k``; then ``E[<S g, S g'>] = <g, g'>`` over the hash draw (signs of distinct
coordinates are uncorrelated), and the variance falls as ``1/k``. No dense ``d x k``
matrix is ever formed.

For a layer whose per-sample gradient is a sum of outer products ``sum_p d_p a_p^T``
(Linear, Conv2d), coordinate ``(o, i)`` hashes to ``(h_out(o) + h_in(i)) mod k`` with sign
``s_out(o) s_in(i)`` (a tensor sketch): the sketch of ``d a^T`` is then the circular
convolution of the sketches of ``d`` and ``a``, computed with FFTs in
``O(P (d_in + d_out + k log k))`` per sample instead of ``O(P d_in d_out)``. Where building
the gradient is cheaper (large ``P``, small layers) it is built and hashed with the same
``h`` and ``s``, so the choice never changes the result beyond rounding.

Hashes depend on ``(seed, layer key)`` only, are drawn on the CPU with their own
generator (no global RNG state), and are cached per layer.
"""

from __future__ import annotations

import hashlib
import math

import torch
from torch import Tensor

from fine_cli.grads.factors import (
    EmbeddingFactor,
    Factor,
    MaterialFactor,
    OuterFactor,
    rows_per_block,
)

# None: choose per layer by the flop estimate; True: always build W_i, then hash (tests).
PREFER_BUILD: bool | None = None
# Temporaries of one block of the FFT route (complex spectra of P positions per sample).
SKETCH_WORK_BYTES = 256 << 20


class Sketcher:
    """Sketches factors to ``k`` dimensions with hashes drawn from ``seed``."""

    def __init__(self, k: int, seed: int) -> None:
        self.k = k
        self.seed = seed
        self._cache: dict[tuple[str, str, int], tuple[Tensor, Tensor]] = {}

    def hashes(self, key: str, part: str, size: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(size,)`` bucket indices in ``[0, k)`` and ``(size,)`` signs in ``{-1, +1}``."""
        cached = self._cache.get((key, part, size))
        if cached is None:
            digest = hashlib.sha256(f"{self.seed}/{key}/{part}".encode()).digest()
            gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
            buckets = torch.randint(0, self.k, (size,), generator=gen)
            signs = torch.randint(0, 2, (size,), generator=gen) * 2 - 1
            cached = (buckets, signs)
            self._cache[(key, part, size)] = cached
        return cached[0].to(device), cached[1].to(device)

    def sketch(self, key: str, f: Factor) -> Tensor:
        """``(n, k)`` sketch of the ``n`` per-sample gradients that ``f`` describes."""
        if isinstance(f, MaterialFactor):
            h, s = self.hashes(key, "flat", f.grads.shape[1], f.grads.device)
            out = f.grads.new_zeros(f.n, self.k)
            return out.index_add_(1, h, f.grads * s.to(f.dtype))
        if isinstance(f, EmbeddingFactor):
            return self._embedding(key, f)
        assert isinstance(f, OuterFactor)
        return self._outer(key, f)

    def sketch_dense(self, key: str, f: Factor, grads: Tensor, out: Tensor | None = None) -> Tensor:
        """``(n, k)`` sketch of ``grads`` ``(n, D)``: vectors laid out as ``f``'s built
        gradients (``GradEngine.materialise``), hashed exactly as :meth:`sketch` hashes
        ``f``, so that ``sketch_dense(key, f, built gradients of f) == sketch(key, f)`` and
        a map applied to built gradients (LESS's Adam preconditioning) is sketched in the
        same coordinates as the plain gradients. With ``out`` (``(n, k)``, the dtype of
        ``grads``) the sketch is added to it in place and ``out`` returned; make ``out`` the
        transpose of a contiguous ``(k, n)`` tensor for speed (rows of ``out.T`` are summed
        into, several times faster than columns of ``out``)."""
        dev = grads.device
        if isinstance(f, MaterialFactor):
            h, s = self.hashes(key, "flat", grads.shape[1], dev)
        elif isinstance(f, EmbeddingFactor):
            dim = f.delta.shape[2]
            h_row, s_row = self.hashes(key, "row", f.num_rows, dev)
            h_col, s_col = self.hashes(key, "col", dim, dev)
            h = ((h_row[:, None] + h_col[None, :]) % self.k).reshape(-1)
            s = (s_row[:, None] * s_col[None, :]).reshape(-1)
        else:
            assert isinstance(f, OuterFactor)
            h_out, s_out = self.hashes(key, "out", f.d_out, dev)
            h_in, s_in = self.hashes(key, "in", f.d_in, dev)
            h = ((h_out[:, None] + h_in[None, :]) % self.k).reshape(-1)
            s = (s_out[:, None] * s_in[None, :]).reshape(-1)
        target = out.T if out is not None else grads.new_zeros(self.k, grads.shape[0])
        target.index_add_(0, h, (grads * s.to(grads.dtype)).T.contiguous())
        return target.T

    def _outer(self, key: str, f: OuterFactor) -> Tensor:
        h_out, s_out = self.hashes(key, "out", f.d_out, f.device)
        h_in, s_in = self.hashes(key, "in", f.d_in, f.device)
        p, di, do, k = f.positions, f.d_in, f.d_out, self.k
        fft_cost = p * (di + do + 3 * k * max(1.0, math.log2(k)))
        build = PREFER_BUILD if PREFER_BUILD is not None else p * di * do + 2 * di * do < fft_cost
        out = torch.zeros(f.n, k, dtype=f.dtype, device=f.device)
        if build:
            h = ((h_out[:, None] + h_in[None, :]) % k).reshape(-1)
            s = (s_out[:, None] * s_in[None, :]).reshape(-1).to(f.dtype)
            per_row = (di * do + p * (di + do)) * f.dtype.itemsize
        else:
            per_row = 4 * p * k * f.dtype.itemsize
        step = rows_per_block(SKETCH_WORK_BYTES, per_row, f.n)
        for s0 in range(0, f.n, step):
            s1 = min(f.n, s0 + step)
            a, d = f.rows(s0, s1)
            if build:
                out[s0:s1].index_add_(1, h, f.materialise(a, d) * s)
                continue
            ca = a.new_zeros(s1 - s0, p, k).index_add_(2, h_in, a * s_in.to(a.dtype))
            cd = d.new_zeros(s1 - s0, p, k).index_add_(2, h_out, d * s_out.to(d.dtype))
            # sketch(d a^T) = sketch(d) circularly convolved with sketch(a), summed over p
            spec = (torch.fft.rfft(ca, dim=2) * torch.fft.rfft(cd, dim=2)).sum(1)
            out[s0:s1] = torch.fft.irfft(spec, n=k, dim=1)
        return out

    def _embedding(self, key: str, f: EmbeddingFactor) -> Tensor:
        """Row ``r``, column ``c`` hashes to ``h_row(r) + h_col(c)``: scatter each ``D_t``."""
        n, _, dim = f.delta.shape
        h_row, s_row = self.hashes(key, "row", f.num_rows, f.delta.device)
        h_col, s_col = self.hashes(key, "col", dim, f.delta.device)
        buckets = (h_row[f.idx][:, :, None] + h_col[None, None, :]) % self.k  # (n, T, dim)
        signs = (s_row[f.idx][:, :, None] * s_col[None, None, :]).to(f.dtype)
        out = f.delta.new_zeros(n, self.k)
        return out.scatter_add_(1, buckets.reshape(n, -1), (f.delta * signs).reshape(n, -1))
