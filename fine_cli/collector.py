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
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from fine_cli import distributed
from fine_cli.batches import chunks, fetch, size
from fine_cli.errors import ConfigError, RunError
from fine_cli.grads import GradEngine
from fine_cli.outofcore import ArrayFile
from fine_cli.results import Signals, make_meta
from fine_cli.signal_dir import SignalDirectory, point_shapes
from fine_cli.tasks import ClassificationTask, Task

MAIN, AUX = 0, 1
# Held-out points per forward pass when their loss is recorded.
HELDOUT_CHUNK = 4096


class Collector:
    """Collects the signals of a main and an auxiliary model trained side by side.

    Args:
        main, aux: the two models (same architecture, independent seeds), trained by you;
            ``aux=None`` for the main model alone (enough for the estimators rb and paired,
            in which O_hat cancels; the arrays' model axis then has length 1).
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
        moments: self mode: also record, for the main model, the sum over each probe batch
            of every point's squared inner products ``<g(z), g(z_j)>^2`` (``ip2``), what the
            default estimator rb needs: in the same pass as the inner products, from the
            Gram block of each chunk with the probe points (``GradEngine.per_sample``'s
            ``squares``).
        heldout: held-out ``(x, y)`` points whose mean loss under the main model is recorded
            at every checkpoint (``heldout_loss``): what ``--checkpoints auto`` reads.
        patience: with ``heldout``, stop collecting (``checkpoint()`` does nothing, and
            ``stopped`` is True) once the held-out loss has not improved for this many
            checkpoints; None = never stop.
        shard: inside a torch.distributed group (torchrun), split the training points
            between the ranks, all-reduce the probe sums and sum the per-point arrays onto
            rank 0 (:mod:`fine_cli.distributed`); every rank must call ``checkpoint()``,
            and ``arrays()`` / ``signals()`` hold the result on rank 0 only.
        out_dir, n_checkpoints: write the per-point arrays straight into ``.npy`` files of
            the directory ``out_dir``, preallocated for ``n_checkpoints`` checkpoints, so
            that collection holds one chunk in memory (:mod:`fine_cli.signal_dir`);
            ``signals()`` then maps them, and :func:`fine_cli.outofcore.save_dir` completes
            the directory.
    """

    def __init__(
        self,
        main: nn.Module,
        aux: nn.Module | None,
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
        moments: bool = True,
        heldout: Dataset | None = None,
        patience: int | None = None,
        shard: bool = False,
        out_dir: str | Path | None = None,
        n_checkpoints: int | None = None,
    ) -> None:
        self.n = size(train_set)
        if self.n < 2:
            raise ConfigError(f"train_set has {self.n} point(s); give at least 2.")
        if probe_repeats < 1 or chunk_size < 1 or probe_batch_size < 1:
            raise ConfigError(
                "probe_batch_size, probe_repeats and chunk_size must be positive integers."
            )
        self.models = [main] if aux is None else [main, aux]
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
        if patience is not None and patience < 1:
            raise ConfigError(f"patience must be a positive integer or None, got {patience}.")
        self.moments = moments and test_set is None  # test mode: the Gram block has them
        self.heldout = fetch(heldout, range(size(heldout))) if heldout is not None else None
        self.patience = patience
        self.heldout_loss: list[float] = []
        self.shard = distributed.active() if shard else None  # (rank, world)
        self.store: SignalDirectory | None = None
        if out_dir is not None:
            if n_checkpoints is None or n_checkpoints < 1:
                raise ConfigError("out_dir needs n_checkpoints, the number of checkpoints planned.")
            m = 0 if self.queries is None else int(self.queries[0].shape[0])
            shapes = point_shapes(len(self.models), n_checkpoints, self.r, self.n, m, self.moments)
            # one process prepares the files, the others write their blocks into them
            root = self.shard is None or self.shard[0] == 0
            self.store = SignalDirectory(out_dir, shapes, create=root)
            if self.shard is not None:
                distributed.barrier()

    @property
    def mode(self) -> str:
        return "self" if self.queries is None else "test"

    @property
    def stopped(self) -> bool:
        """True once the held-out loss has not improved for ``patience`` checkpoints."""
        if self.patience is None or len(self.heldout_loss) <= self.patience:
            return False
        best = int(np.argmin(self.heldout_loss))
        return len(self.heldout_loss) - 1 - best >= self.patience

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
        if self.stopped:
            return
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
        rec = _empty_record(
            self.r,
            self.n,
            0 if self.queries is None else self.queries[0].shape[0],
            len(self.models),
        )
        rec["probe_idx"] = probe
        if self.store is not None:
            rec = self.store.place(rec, len(self.records))
        labels = self._label_sink()
        for mi, engine in enumerate(self.engines):
            prepared = engine.probe_batches(batches)
            if self.shard is not None:
                prepared.set_sums(_sharded_sums(engine, batches, *self.shard))
            for j, vec in enumerate(prepared.sums()):
                rec["probe_sqnorm"][mi].flat[j] = float(sum((v.double() ** 2).sum() for v in vec))
            for s0, xc, yc in self._chunks():
                s1 = s0 + xc.shape[0]
                squares = self.moments and mi == MAIN  # ip2 from the same pass's Gram blocks
                res = engine.per_sample(xc, yc, batches=prepared, squares=squares)
                _require_finite(res, len(self.records) + 1)
                rec["sqnorm"][mi, s0:s1] = res.sqnorm.cpu().numpy()
                rec["ip"][mi, :, :, s0:s1] = res.ips.reshape(self.r, 2, -1).cpu().numpy()
                rec["loss"][mi, s0:s1] = res.loss.cpu().numpy()
                rec["margin"][mi, s0:s1] = res.margin.cpu().numpy()
                if res.squares is not None:
                    rec["ip2"][..., s0:s1] = res.squares.reshape(self.r, 2, -1).cpu().numpy()
                if self.queries is not None:
                    xq, yq = self.queries
                    rec["gram"][mi, :, s0:s1] = engine.gram(xq, yq, xc, yc).cpu().numpy()
                if labels is not None and mi == MAIN:
                    labels[s0:s1] = _label_values(yc)
            if self.queries is not None:
                xq, yq = self.queries
                tres = engine.per_sample(xq, yq, batches=prepared)
                rec["test_sqnorm"][mi] = tres.sqnorm.cpu().numpy()
                rec["test_ip"][mi] = tres.ips.reshape(self.r, 2, -1).cpu().numpy()
                rec["test_loss"][mi] = tres.loss.cpu().numpy()
                rec["test_margin"][mi] = tres.margin.cpu().numpy()
        if self.heldout is not None:
            self.heldout_loss.append(_mean_loss(self.models[MAIN], self.task, *self.heldout))
        if self.shard is not None:
            rec, labels = self._gather(rec, labels)
        if isinstance(labels, np.ndarray):
            self.labels = labels
        elif labels is not None:  # out_dir: written to labels.npy
            assert self.store is not None
            self.labels = self.store.recorded("labels", 0)
        self.records.append(rec)
        self.lr.append(float(lr))
        self.epochs.append(int(epoch) if epoch is not None else len(self.records))
        if any(p.is_cuda for p in self.engines[MAIN].params):
            torch.cuda.synchronize()
        self.collect_s += time.perf_counter() - t0

    def _chunks(self) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
        """``(start, x, y)`` of this process's chunks: all of them, or its rank's block."""
        own = range(self.n)
        if self.shard is not None:
            own = distributed.shard_range(self.n, self.chunk_size, *self.shard)
        for s0, xc, yc in chunks(self.train_set, self.chunk_size, own, **self.loader_kwargs):
            yield own.start + s0, xc, yc

    def _label_sink(self) -> np.ndarray | ArrayFile | None:
        """Where the first checkpoint writes the training labels (None once known)."""
        if self.labels is not None:
            return None
        return self.store.labels() if self.store is not None else np.zeros(self.n, np.int64)

    def _gather(
        self, rec: dict[str, Any], labels: np.ndarray | ArrayFile | None
    ) -> tuple[dict[str, Any], Any]:
        """Sharded: the per-point arrays of every rank summed onto rank 0 (zeros outside a
        rank's block make the sum exact); with out_dir each rank wrote its own block."""
        if self.store is not None:
            distributed.barrier()
            return rec, labels
        out = dict(rec)
        for key, value in rec.items():
            if _per_point(key, value, self.n):
                out[key] = distributed.reduce_to_root(value)
        if isinstance(labels, np.ndarray):
            labels = distributed.reduce_to_root(labels)
        return out, labels

    def _point_arrays(self) -> dict[str, np.ndarray]:
        """``train_index``, ``labels``, ``clean_labels``, ``flip_mask`` (n,) each; with
        out_dir, defaults are written to files block by block and mapped."""
        assert self.labels is not None
        index = None if self.index is None else np.asarray(self.index, np.int64)
        flips = None if self.flip_mask is None else np.asarray(self.flip_mask, bool)
        clean = None if self.clean_labels is None else np.asarray(self.clean_labels, np.int64)
        if self.store is None:
            return {
                "train_index": np.arange(self.n, dtype=np.int64) if index is None else index,
                "labels": self.labels,
                "clean_labels": self.labels if clean is None else clean,
                "flip_mask": np.zeros(self.n, bool) if flips is None else flips,
            }
        store = self.store
        return {
            "train_index": store.mapped_default(
                "train_index", index, lambda a, b: np.arange(a, b, dtype=np.int64)
            ),
            "labels": self.labels,
            "clean_labels": self.labels
            if clean is None
            else store.mapped_default("clean_labels", clean, None),
            "flip_mask": store.mapped_default(
                "flip_mask", flips, lambda a, b: np.zeros(b - a, bool)
            ),
        }

    # ---- resume (fine_cli/runstate.py) --------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """What a resumed collector needs besides each checkpoint's arrays
        (:meth:`record_arrays`): the probe RNG, learning rates, epochs, timings."""
        return {
            "rng": self.rng.bit_generator.state,
            "lr": list(self.lr),
            "epochs": list(self.epochs),
            "collect_s": self.collect_s,
            "heldout_loss": list(self.heldout_loss),
            "n_records": len(self.records),
        }

    def record_arrays(self, c: int) -> dict[str, np.ndarray]:
        """The in-memory arrays of checkpoint ``c`` (with out_dir, the files hold the
        rest), and the labels with the first checkpoint."""
        out = {k: v for k, v in self.records[c].items() if isinstance(v, np.ndarray)}
        if c == 0 and self.store is None and self.labels is not None:
            out["__labels__"] = np.asarray(self.labels)
        return out

    def load_state_dict(self, state: dict[str, Any], records: list[dict[str, np.ndarray]]) -> None:
        """Continue after the checkpoints of ``records`` (from :meth:`record_arrays`)."""
        self.rng.bit_generator.state = state["rng"]
        self.lr = [float(v) for v in state["lr"]]
        self.epochs = [int(v) for v in state["epochs"]]
        self.collect_s = float(state["collect_s"])
        self.heldout_loss = [float(v) for v in state["heldout_loss"]]
        self.records = []
        for c, rec in enumerate(records):
            rec = dict(rec)
            labels = rec.pop("__labels__", None)
            if labels is not None:
                self.labels = labels
            self.records.append(self.store.place(rec, c) if self.store is not None else rec)
        if self.store is not None and self.records:
            self.labels = self.store.recorded("labels", 0)

    def arrays(self) -> dict[str, np.ndarray]:
        """The signals' arrays so far (docs/ARTIFACTS.md), checkpoints stacked on axis 1.
        Sharded, rank 0 holds them; the other ranks get an empty dict."""
        if not self.records:
            raise RunError("no checkpoint was recorded; call checkpoint() after training steps.")
        if self.shard is not None and self.shard[0] != 0:
            return {}

        def stack(key: str, axis: int = 1) -> np.ndarray:
            if isinstance(self.records[0][key], ArrayFile):  # out_dir: mapped from its file
                assert self.store is not None
                return self.store.recorded(key, len(self.records))
            return np.stack([r[key] for r in self.records], axis=axis)

        assert self.labels is not None
        out = {
            "lr": np.asarray(self.lr, np.float64),
            "probe_idx": stack("probe_idx", 0),
            **{k: stack(k) for k in ("sqnorm", "ip", "probe_sqnorm", "loss", "margin")},
        }
        if self.moments:
            out["ip2"] = stack("ip2", 0)  # (C, R, 2, n)
        if self.heldout is not None:
            out["heldout_loss"] = np.asarray(self.heldout_loss[: len(self.records)], np.float64)
        if self.queries is not None:
            for k in ("test_sqnorm", "test_ip", "test_loss", "test_margin", "gram"):
                out[k] = stack(k)
            out["test_labels"] = _labels(self.queries[1])
            if self.group_ptr is not None and self.group_members is not None:
                out["group_ptr"], out["group_members"] = self.group_ptr, self.group_members
        out.update(self._point_arrays(), checkpoint_epoch=np.asarray(self.epochs, np.int64))
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


def _require_finite(res: Any, c: int) -> None:
    for key, values in (("sqnorm", res.sqnorm), ("ip", res.ips), ("loss", res.loss)):
        if not bool(torch.isfinite(values).all()):
            raise RunError(
                f"training diverged: non-finite values in the collected '{key}' at checkpoint "
                f"{c}; lower the learning rate."
            )


def _label_values(y: torch.Tensor) -> np.ndarray:
    """(c,) int64 class labels of a chunk; -1 for targets that are not one label each."""
    a = y.cpu().numpy()
    return a.astype(np.int64) if a.ndim == 1 else np.full(a.shape[0], -1, np.int64)


# Arrays of a checkpoint that every rank computes whole (not split over the points).
_REPLICATED = ("probe_idx", "probe_sqnorm")


def _per_point(key: str, value: Any, n: int) -> bool:
    """Whether a checkpoint array runs over the training points on its last axis."""
    return (
        isinstance(value, np.ndarray)
        and value.ndim > 0
        and value.shape[-1] == n
        and key not in _REPLICATED
        and not key.startswith("test_")
    )


def _sharded_sums(
    engine: GradEngine, batches: list[tuple[torch.Tensor, torch.Tensor]], rank: int, world: int
) -> list[list[torch.Tensor]]:
    """Each probe batch's gradient sum: every rank sums its part of the batch, then the
    parts are all-reduced."""
    from fine_cli.training import part_bounds

    sums = []
    for xb, yb in batches:
        lo, hi = part_bounds(xb.shape[0], world)[rank : rank + 2]
        part = engine.batch_grad_sum(xb[lo:hi], yb[lo:hi])
        distributed.all_reduce_(part)
        sums.append(part)
    return sums


def _empty_record(r: int, n: int, m: int, models: int = 2) -> dict[str, np.ndarray]:
    """One checkpoint's arrays for the models (the checkpoint axis is added when stacking)."""
    f32 = np.float32
    rec = {
        "sqnorm": np.zeros((models, n), f32),
        "ip": np.zeros((models, r, 2, n), f32),
        "probe_sqnorm": np.zeros((models, r, 2), f32),
        "loss": np.zeros((models, n), f32),
        "margin": np.zeros((models, n), f32),
        "ip2": np.zeros((r, 2, n), f32),
    }
    if m:
        rec.update(
            test_sqnorm=np.zeros((models, m), f32),
            test_ip=np.zeros((models, r, 2, m), f32),
            test_loss=np.zeros((models, m), f32),
            test_margin=np.zeros((models, m), f32),
            gram=np.zeros((models, m, n), f32),
        )
    return rec


def _mean_loss(model: nn.Module, task: Task, x: torch.Tensor, y: torch.Tensor) -> float:
    """The task's mean loss of ``model`` on held-out points (eval mode, chunks)."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    total = 0.0
    try:
        with torch.no_grad():
            for s in range(0, x.shape[0], HELDOUT_CHUNK):
                out = model(x[s : s + HELDOUT_CHUNK])
                total += float(task.loss(out, y[s : s + HELDOUT_CHUNK]).double().sum())
    finally:
        for m, flag in flags:
            m.training = flag
    return total / max(1, x.shape[0])


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
