"""f-INE signals from any training loop: call :meth:`Collector.checkpoint` after an epoch
(or every k steps), :meth:`Collector.signals` at the end.

    collector = Collector(main, aux, train_set, ClassificationTask(), probe_batch_size=100)
    for epoch in range(epochs):
        ...  # your training of main and aux
        collector.checkpoint(lr=optimizer.param_groups[0]["lr"])
    signals = collector.signals()

At each checkpoint c and for each of the two models (in eval mode, so BatchNorm uses its
running statistics) the collector draws R probe-batch pairs (B, B') at random from the
training set, once for all subsets, and records every training point's squared gradient
norm and inner products with the 2R probe-batch gradient sums, plus its loss and margin
(ALGORITHM.md, section 2); in test mode also the test points' quantities and the
(test x train) Gram block. Removing S from the probe batches happens in Stage 2. The
training set is read through a ``DataLoader`` in chunks of ``chunk_size`` points.

Dimension names: C checkpoints, R probe pairs, b probe batch size, n training points,
m test points.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fine_cli.batches import chunks, fetch, size
from fine_cli.errors import ConfigError, RunError
from fine_cli.grads import GradEngine
from fine_cli.results import Signals, make_meta
from fine_cli.tasks import ClassificationTask, Task

MAIN, AUX = 0, 1


class Collector:
    """Collects the signals of a main and an auxiliary model trained side by side.

    Args:
        main, aux: the two models (same architecture, independent seeds), trained by you.
        train_set: the training set, a ``Dataset`` of ``(x, y)``; index ``i`` is point ``i``.
        task: per-sample loss and margin (default: classification cross-entropy).
        probe_batch_size: b, points per probe batch (default 100, the paper's batch size).
        probe_repeats: R, probe-batch pairs per checkpoint.
        seed: seed of the probe-batch draws.
        chunk_size: training points per engine call (memory against speed).
        test_set: test mode: the ``(x, y)`` test points (all read at once; m is small).
        groups: test mode: subsets as lists of training positions (default: singletons).
        flip_mask, clean_labels, index: known label errors, labels before flipping and each
            point's index in its source, stored for evaluation (defaults: none flipped,
            the labels as given, ``0..n-1``).
        loader_kwargs: passed to the ``DataLoader`` (e.g. ``num_workers``).
    """

    def __init__(
        self,
        main: nn.Module,
        aux: nn.Module,
        train_set: Dataset,
        task: Task | None = None,
        *,
        probe_batch_size: int = 100,
        probe_repeats: int = 1,
        seed: int = 0,
        chunk_size: int = 2048,
        test_set: Dataset | None = None,
        groups: Sequence[Sequence[int]] | None = None,
        flip_mask: np.ndarray | None = None,
        clean_labels: np.ndarray | None = None,
        index: np.ndarray | None = None,
        loader_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.n = size(train_set)
        if self.n < 2:
            raise ConfigError(f"train_set has {self.n} point(s); give at least 2.")
        if probe_repeats < 1 or chunk_size < 1 or probe_batch_size < 1:
            raise ConfigError(
                "probe_batch_size, probe_repeats and chunk_size must be positive integers."
            )
        self.models = [main, aux]
        self.train_set = train_set
        self.task: Task = task if task is not None else ClassificationTask()
        self.b = min(probe_batch_size, self.n)
        self.r = probe_repeats
        self.seed = seed
        self.chunk_size = chunk_size
        self.loader_kwargs = loader_kwargs or {}
        self.rng = np.random.default_rng(seed)
        self.engines = [GradEngine(m, chunk_size=chunk_size, task=self.task) for m in self.models]
        self.queries = fetch(test_set, range(size(test_set))) if test_set is not None else None
        self.group_ptr: np.ndarray | None = None
        self.group_members: np.ndarray | None = None
        if groups:
            self.group_ptr, self.group_members = _groups_csr(groups, self.n)
        self.flip_mask = flip_mask
        self.clean_labels = clean_labels
        self.index = index
        self.labels: np.ndarray | None = None
        self.records: list[dict[str, np.ndarray]] = []
        self.lr: list[float] = []
        self.epochs: list[int] = []
        self.collect_s = 0.0

    @property
    def mode(self) -> str:
        return "self" if self.queries is None else "test"

    def checkpoint(
        self,
        lr: float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        epoch: int | None = None,
    ) -> None:
        """Record checkpoint c at the models' current weights.

        ``lr`` (or ``optimizer``'s first group's) is the learning rate in force, which
        TracIn weighs by; ``epoch`` labels the checkpoint (default: its 1-based number).
        """
        t0 = time.perf_counter()
        if lr is None:
            lr = float(optimizer.param_groups[0]["lr"]) if optimizer is not None else 1.0
        probe = np.stack(
            [
                [np.sort(self.rng.choice(self.n, self.b, replace=False)) for _ in range(2)]
                for _ in range(self.r)
            ]
        )  # (R, 2, b)
        batches = [fetch(self.train_set, probe[ri, k]) for ri in range(self.r) for k in range(2)]
        rec = _empty_record(self.r, self.n, 0 if self.queries is None else self.queries[0].shape[0])
        rec["probe_idx"] = probe
        labels: list[np.ndarray] | None = [] if self.labels is None else None
        for mi, engine in enumerate(self.engines):
            prepared = engine.probe_batches(batches)
            for j, vec in enumerate(prepared.sums()):
                rec["probe_sqnorm"][mi].flat[j] = float(sum((v.double() ** 2).sum() for v in vec))
            for s0, xc, yc in chunks(self.train_set, self.chunk_size, **self.loader_kwargs):
                s1 = s0 + xc.shape[0]
                res = engine.per_sample(xc, yc, batches=prepared)
                rec["sqnorm"][mi, s0:s1] = res.sqnorm.cpu().numpy()
                rec["ip"][mi, :, :, s0:s1] = res.ips.reshape(self.r, 2, -1).cpu().numpy()
                rec["loss"][mi, s0:s1] = res.loss.cpu().numpy()
                rec["margin"][mi, s0:s1] = res.margin.cpu().numpy()
                if self.queries is not None:
                    xq, yq = self.queries
                    rec["gram"][mi, :, s0:s1] = engine.gram(xq, yq, xc, yc).cpu().numpy()
                if labels is not None and mi == MAIN:
                    labels.append(yc.cpu().numpy())
            if self.queries is not None:
                xq, yq = self.queries
                tres = engine.per_sample(xq, yq, batches=prepared)
                rec["test_sqnorm"][mi] = tres.sqnorm.cpu().numpy()
                rec["test_ip"][mi] = tres.ips.reshape(self.r, 2, -1).cpu().numpy()
                rec["test_loss"][mi] = tres.loss.cpu().numpy()
                rec["test_margin"][mi] = tres.margin.cpu().numpy()
        if labels is not None:
            y = np.concatenate(labels)
            self.labels = y.astype(np.int64) if y.ndim == 1 else np.full(self.n, -1, np.int64)
        for k in ("sqnorm", "ip", "loss"):
            if not np.all(np.isfinite(rec[k])):
                raise RunError(
                    f"training diverged: non-finite values in the collected '{k}' at checkpoint "
                    f"{len(self.records) + 1}; lower the learning rate."
                )
        self.records.append(rec)
        self.lr.append(float(lr))
        self.epochs.append(int(epoch) if epoch is not None else len(self.records))
        if any(p.is_cuda for p in self.engines[MAIN].params):
            torch.cuda.synchronize()
        self.collect_s += time.perf_counter() - t0

    def arrays(self) -> dict[str, np.ndarray]:
        """The signals' arrays so far (docs/ARTIFACTS.md), checkpoints stacked on axis 1."""
        if not self.records:
            raise RunError("no checkpoint was recorded; call checkpoint() after training steps.")

        def stack(key: str, axis: int = 1) -> np.ndarray:
            return np.stack([r[key] for r in self.records], axis=axis)

        assert self.labels is not None
        out = {
            "lr": np.asarray(self.lr, np.float64),
            "probe_idx": stack("probe_idx", 0),
            **{k: stack(k) for k in ("sqnorm", "ip", "probe_sqnorm", "loss", "margin")},
        }
        if self.queries is not None:
            for k in ("test_sqnorm", "test_ip", "test_loss", "test_margin", "gram"):
                out[k] = stack(k)
            out["test_labels"] = _labels(self.queries[1])
            if self.group_ptr is not None and self.group_members is not None:
                out["group_ptr"], out["group_members"] = self.group_ptr, self.group_members
        out.update(
            train_index=(
                np.arange(self.n, dtype=np.int64)
                if self.index is None
                else np.asarray(self.index, np.int64)
            ),
            labels=self.labels,
            clean_labels=(
                self.labels
                if self.clean_labels is None
                else np.asarray(self.clean_labels, np.int64)
            ),
            flip_mask=(
                np.zeros(self.n, bool)
                if self.flip_mask is None
                else np.asarray(self.flip_mask, bool)
            ),
            checkpoint_epoch=np.asarray(self.epochs, np.int64),
        )
        if self.queries is not None and "test_index" not in out:
            out["test_index"] = np.arange(self.queries[0].shape[0], dtype=np.int64)
        return out

    def signals(self, **meta: Any) -> Signals:
        """The collected :class:`~fine_cli.results.Signals`; ``meta`` entries are recorded
        (``test_index`` among them sets the test points' indices)."""
        arrays = self.arrays()
        if "test_index" in meta:
            arrays["test_index"] = np.asarray(meta.pop("test_index"), np.int64)
        fields: dict[str, Any] = {
            "mode": self.mode,
            "task": self.task.name,
            "seeds": {"probe": self.seed},
            "timing": {"collect_s": round(self.collect_s, 3)},
        }
        fields.update(meta)
        return Signals(arrays=arrays, meta=make_meta("signals", **fields), source="memory")


def _empty_record(r: int, n: int, m: int) -> dict[str, np.ndarray]:
    """One checkpoint's arrays for both models (the checkpoint axis is added when stacking)."""
    f32 = np.float32
    rec = {
        "sqnorm": np.zeros((2, n), f32),
        "ip": np.zeros((2, r, 2, n), f32),
        "probe_sqnorm": np.zeros((2, r, 2), f32),
        "loss": np.zeros((2, n), f32),
        "margin": np.zeros((2, n), f32),
    }
    if m:
        rec.update(
            test_sqnorm=np.zeros((2, m), f32),
            test_ip=np.zeros((2, r, 2, m), f32),
            test_loss=np.zeros((2, m), f32),
            test_margin=np.zeros((2, m), f32),
            gram=np.zeros((2, m, n), f32),
        )
    return rec


def _or(given: np.ndarray | None, default: np.ndarray, dtype: type) -> np.ndarray:
    return default if given is None else np.asarray(given, dtype)


def _labels(y: torch.Tensor) -> np.ndarray:
    a = y.cpu().numpy()
    return a.astype(np.int64) if a.ndim == 1 else np.full(a.shape[0], -1, np.int64)


def _groups_csr(groups: Sequence[Sequence[int]], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Lists of training positions -> CSR (ptr (G+1,), members (total,))."""
    if not all(len(g) for g in groups):
        raise ConfigError("groups: every group must hold at least one training position.")
    members = np.array([int(i) for g in groups for i in g], dtype=np.int64)
    if members.size and (members.min() < 0 or members.max() >= n):
        raise ConfigError(f"groups: positions must lie in 0..{n - 1}.")
    ptr = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    return ptr, members


__all__ = ["Collector"]
