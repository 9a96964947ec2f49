"""Projected per-sample gradients for TRAK and influence functions (docs/ARTIFACTS.md).

Collected once, after the last epoch, by the engine's count-sketch ``S`` (``k`` dims, one
hash seed for every model and run, so that features of different models live in the same
space):

- ``proj_grad[e, i] = S grad f_e(z_i)``, the gradient of TRAK's model output function
  ``f(z) = log(p / (1 - p))`` (``p``: softmax probability of the label) for model ``e``.
  The engine differentiates ``f`` itself (the task :class:`~fine_cli.tasks.OutputFunctionTask`);
  nothing is divided by ``1 - p``, which underflows for well-fitted points.
- ``one_minus_p[e, i] = 1 - p = sigmoid(-f)``: TRAK's weight ``Q``; the loss gradient is
  ``grad loss = -(1 - p) grad f``, so influence functions need no second sketch.
- ``ggn = S G S^T``: the Gauss-Newton matrix of the main model's mean training loss, which
  for softmax cross-entropy is the Fisher, ``G = (1/n) sum_i sum_c p_ic g_ic g_ic^T``
  (``g_ic``: loss gradient of ``x_i`` with label ``c``); one sketch per class.

Dimension names: ``E`` models with features, ``n`` training points, ``m`` test points,
``k`` sketch dimension, ``C`` classes.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fine_cli.batches import chunks, size
from fine_cli.grads import GradEngine
from fine_cli.tasks import ClassificationTask, OutputFunctionTask

# Rows per float64 block when the per-class sketches are folded into the (k, k) curvature.
GGN_BLOCK = 4096


def output_function(logits: Tensor, y: Tensor) -> Tensor:
    """``(n,)`` ``f = log(p / (1 - p)) = z_y - logsumexp_{c != y} z_c`` of ``(n, C)`` logits."""
    return ClassificationTask().output_function(logits, y)


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def probabilities(model: nn.Module, data: Dataset, chunk: int) -> Tensor:
    """``(n, C)`` float64 softmax probabilities in eval mode."""
    with torch.no_grad(), _eval(model):
        logits = [model(x).double() for _, x, _ in chunks(data, chunk)]
    return torch.softmax(torch.cat(logits), dim=1)


def one_minus_p(model: nn.Module, data: Dataset, chunk: int) -> Tensor:
    """``(n,)`` float64 ``1 - p(y | x) = sigmoid(-f)``, accurate where ``p`` rounds to 1."""
    with torch.no_grad(), _eval(model):
        f = [output_function(model(x).double(), y) for _, x, y in chunks(data, chunk)]
    return torch.sigmoid(-torch.cat(f))


def margin_grads(model: nn.Module, data: Dataset, k: int, seed: int, chunk: int) -> Tensor:
    """``(n, k)`` float32 ``S grad f(z_i)``: TRAK's features of one model (the engine
    differentiates the output function itself, :class:`~fine_cli.tasks.OutputFunctionTask`)."""
    engine = GradEngine(model, chunk_size=chunk, task=OutputFunctionTask())
    with _eval(model):
        return torch.cat([engine.project(x, y, k, seed) for _, x, y in chunks(data, chunk)])


def gauss_newton(
    model: nn.Module,
    data: Dataset,
    n_classes: int,
    k: int,
    seed: int,
    chunk: int,
) -> np.ndarray:
    """``(k, k)`` float64 ``S G S^T``, ``G`` the Gauss-Newton matrix of the mean loss.

    ``G = (1/n) sum_i J_i^T (diag(p_i) - p_i p_i^T) J_i = (1/n) sum_i sum_c p_ic g_ic g_ic^T``
    with ``g_ic = J_i^T (p_i - e_c)`` the loss gradient of ``x_i`` labelled ``c``.
    """
    engine = GradEngine(model, chunk_size=chunk)
    p = probabilities(model, data, chunk)  # (n, C)
    n = p.shape[0]
    out = torch.zeros(k, k, dtype=torch.float64)
    for c in range(n_classes):
        with _eval(model):
            sk = torch.cat(
                [
                    engine.project(x, torch.full((x.shape[0],), c, dtype=torch.long), k, seed)
                    for _, x, _ in chunks(data, chunk)
                ]
            )  # (n, k)
        for s0 in range(0, n, GGN_BLOCK):
            w = sk[s0 : s0 + GGN_BLOCK].double() * p[s0 : s0 + GGN_BLOCK, c, None].sqrt()
            out += (w.T @ w).cpu()
    return (out / n).numpy()


@dataclass
class FeatureRequest:
    """What to collect: for which methods, at which sketch size."""

    methods: set[str]
    proj_dim: int
    seed: int
    chunk_size: int
    n_classes: int
    timing: dict[str, float] = field(default_factory=dict)

    @property
    def wanted(self) -> bool:
        return bool(self.methods)

    def n_models(self, trained: int) -> int:
        """TRAK ensembles every trained model; influence functions need the main one only."""
        return trained if "trak" in self.methods else 1


def collect(
    req: FeatureRequest,
    models: Sequence[nn.Module],
    data: Dataset,
    queries: Dataset | None = None,
) -> dict[str, np.ndarray]:
    """Arrays of docs/ARTIFACTS.md ("projected features") for ``models`` at their current
    weights: ``proj_grad`` ``(E, n, k)``, ``one_minus_p`` ``(E, n)``, ``ggn`` ``(k, k)`` when
    influence functions are asked for, and ``test_*`` twins ``(E, m, k)``, ``(E, m)`` for
    ``queries`` ``(x (m, ...), y (m,))``. ``req.timing`` gets seconds per part."""
    e = req.n_models(len(models))
    k, seed, chunk = req.proj_dim, req.seed, req.chunk_size
    n = size(data)
    out: dict[str, np.ndarray] = {
        "proj_grad": np.zeros((e, n, k), np.float32),
        "one_minus_p": np.zeros((e, n), np.float64),
    }
    t0 = time.perf_counter()
    for mi, model in enumerate(models[:e]):
        out["proj_grad"][mi] = margin_grads(model, data, k, seed, chunk).cpu()
        out["one_minus_p"][mi] = one_minus_p(model, data, chunk).cpu()
        req.timing[f"proj_model{mi}_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
    if queries is not None:
        out["test_proj_grad"] = np.stack(
            [margin_grads(m, queries, k, seed, chunk).cpu() for m in models[:e]]
        )
        out["test_one_minus_p"] = np.stack(
            [one_minus_p(m, queries, chunk).cpu() for m in models[:e]]
        )
        req.timing["proj_test_s"] = round(time.perf_counter() - t0, 3)
        t0 = time.perf_counter()
    if "if" in req.methods:
        out["ggn"] = gauss_newton(models[0], data, req.n_classes, k, seed, chunk)
        req.timing["ggn_s"] = round(time.perf_counter() - t0, 3)
    return out


def describe(req: FeatureRequest, n_models: int, at_epoch: int) -> dict[str, Any]:
    """The ``features`` entry of a signals file's metadata."""
    return {
        "methods": sorted(req.methods),
        "proj_dim": req.proj_dim,
        "seed": req.seed,
        "models": req.n_models(n_models),
        "output_function": "log(p / (1 - p))",
        "curvature": "gauss-newton (main model)" if "if" in req.methods else None,
        "at_epoch": at_epoch,
        "timing": dict(req.timing),
    }
