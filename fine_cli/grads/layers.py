"""Layer types with a per-sample gradient formula, and their factors.

Each formula needs only what a forward hook and the backward pass give: the layer's input
``a`` and the gradient ``delta`` of the summed loss w.r.t. the layer's output. With the
model in eval mode samples do not interact, so row ``i`` of ``delta`` is the gradient of
sample ``i``'s own loss.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fine_cli.grads.factors import EmbeddingFactor, Factor, MaterialFactor, OuterFactor

_AFFINE = frozenset({"weight", "bias"})
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """Explicit symmetric padding of ``m``, or None when only an asymmetric pad would match."""
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size, strict=True)]
        if any(t % 2 for t in total):
            return None
        return (total[0] // 2, total[1] // 2)
    pad = m.padding
    assert isinstance(pad, tuple)
    return (int(pad[0]), int(pad[1]))


def supports(m: nn.Module, names: tuple[str, ...]) -> bool:
    """Whether ``m`` has a formula for its trainable direct parameters ``names``.

    Exact types only: a subclass may change ``forward`` and so the gradient.
    """
    if not names or not set(names) <= _AFFINE:
        return False
    kind = type(m)
    if kind is nn.Linear:
        return True
    if kind is nn.Conv2d:
        assert isinstance(m, nn.Conv2d)
        return m.groups == 1 and m.padding_mode == "zeros" and _conv_padding(m) is not None
    if kind is nn.Embedding:
        assert isinstance(m, nn.Embedding)
        # both make the gradient depend on the whole batch or change the weight in forward
        return m.max_norm is None and not m.scale_grad_by_freq
    return kind in _NORMS


def check_independent(m: nn.Module) -> None:
    """Refuse layers that mix samples even in eval mode (the formulas would be wrong)."""
    if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.running_mean is None:
        raise ValueError(
            f"model: {type(m).__name__} has track_running_stats=False, so it normalises with "
            "batch statistics even in eval mode and per-sample gradients are not defined; "
            "build it with track_running_stats=True."
        )


def make_factor(m: nn.Module, a: Tensor, delta: Tensor, names: tuple[str, ...]) -> Factor:
    """The factor of ``m``'s per-sample gradients for input ``a`` and output gradient ``delta``.

    ``a`` and ``delta`` have the sample dimension first: ``(n, ...)``.
    """
    if isinstance(m, nn.Linear) and type(m) is nn.Linear:
        n = a.shape[0]
        return _outer(a.reshape(n, -1, m.in_features), delta.reshape(n, -1, m.out_features), names)
    if isinstance(m, nn.Conv2d) and type(m) is nn.Conv2d:
        return _conv(m, a, delta, names)
    if isinstance(m, nn.Embedding) and type(m) is nn.Embedding:
        return _embedding(m, a, delta)
    return MaterialFactor(_norm_grads(m, a, delta, names), names)


def _with_ones(a: Tensor, names: tuple[str, ...]) -> Tensor:
    """``(s, P, d_in')``: ``a`` if the weight is trainable, then ones if the bias is."""
    parts = [a] if "weight" in names else []
    if "bias" in names:
        parts.append(a.new_ones(a.shape[0], a.shape[1], 1))
    return parts[0] if len(parts) == 1 else torch.cat(parts, 2)


def _outer(a: Tensor, d: Tensor, names: tuple[str, ...]) -> OuterFactor:
    """Linear layer: ``a`` ``(n, T, in)``, ``d`` ``(n, T, out)``; positions are ``T``."""
    n, t, d_in = a.shape
    width = (d_in if "weight" in names else 0) + (1 if "bias" in names else 0)
    # the squared norms and the probe Gram block usually ask for the same rows in turn:
    # the last block is kept so that its column of ones is appended once, not twice
    last: dict[tuple[int, int], tuple[Tensor, Tensor]] = {}

    def rows(s0: int, s1: int) -> tuple[Tensor, Tensor]:
        if (s0, s1) not in last:
            last.clear()
            last[(s0, s1)] = _with_ones(a[s0:s1], names), d[s0:s1]
        return last[(s0, s1)]

    return OuterFactor(n, t, width, d.shape[2], rows, names, d.dtype, d.device)


def _conv(m: nn.Conv2d, a: Tensor, delta: Tensor, names: tuple[str, ...]) -> OuterFactor:
    """Conv2d: positions are output pixels, ``A`` the unfolded input ``(P, C_in k_h k_w)``."""
    if a.dim() != 4:
        raise ValueError(
            f"model: Conv2d got an input of shape {tuple(a.shape)}; the gradient engine needs "
            "batched (n, C, H, W) inputs."
        )
    pad = _conv_padding(m)
    assert pad is not None
    n, c_out = delta.shape[0], delta.shape[1]
    positions = delta.shape[2] * delta.shape[3]
    d_in = m.in_channels * math.prod(m.kernel_size)
    width = (d_in if "weight" in names else 0) + (1 if "bias" in names else 0)

    def rows(s0: int, s1: int) -> tuple[Tensor, Tensor]:
        # unfold per block: the whole chunk unfolded would be k_h k_w times the input
        cols = F.unfold(a[s0:s1], m.kernel_size, m.dilation, pad, m.stride)
        d = delta[s0:s1].flatten(2).transpose(1, 2)
        return _with_ones(cols.transpose(1, 2), names), d

    return OuterFactor(n, positions, width, c_out, rows, names, delta.dtype, delta.device)


def _embedding(m: nn.Embedding, a: Tensor, delta: Tensor) -> EmbeddingFactor:
    n = a.shape[0]
    idx = a.reshape(n, -1)
    d = delta.reshape(n, idx.shape[1], m.embedding_dim)
    if m.padding_idx is not None:
        # the padding row never receives gradient
        d = d * (idx != m.padding_idx).unsqueeze(2).to(d.dtype)
    return EmbeddingFactor(idx, d, m.num_embeddings)


def _norm_grads(m: nn.Module, a: Tensor, delta: Tensor, names: tuple[str, ...]) -> Tensor:
    """``(n, d)`` per-sample gradients of a normalisation layer's scale and shift.

    These layers compute ``xhat * weight + bias`` elementwise, so per sample
    ``dweight = sum(delta * xhat)`` and ``dbias = sum(delta)`` over the positions that
    share one parameter entry.
    """
    n = a.shape[0]
    size = 0  # entries of one normalised slice, for LayerNorm and RMSNorm
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        xhat = F.batch_norm(a, m.running_mean, m.running_var, None, None, False, 0.0, m.eps)
        per_channel = True
    elif isinstance(m, nn.GroupNorm):
        xhat = F.group_norm(a, m.num_groups, None, None, m.eps)
        per_channel = True
    elif isinstance(m, nn.LayerNorm):
        xhat = F.layer_norm(a, m.normalized_shape, None, None, m.eps)
        per_channel, size = False, math.prod(m.normalized_shape)
    else:
        assert isinstance(m, nn.RMSNorm)
        xhat = F.rms_norm(a, m.normalized_shape, None, m.eps)
        per_channel, size = False, math.prod(m.normalized_shape)

    def total(t: Tensor) -> Tensor:
        if per_channel:  # parameters along dim 1: (n, C, *) -> (n, C)
            return t.reshape(n, t.shape[1], -1).sum(2)
        return t.reshape(n, -1, size).sum(1)

    parts = []
    for name in names:
        parts.append(total(delta * xhat) if name == "weight" else total(delta))
    return torch.cat(parts, 1)
