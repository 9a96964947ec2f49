"""Stage 1 (Algorithm 1): train the main and auxiliary models side by side and collect,
at each checkpoint, the components of the f-INE signals (docs/ARTIFACTS.md).

Training is :mod:`fine_cli.training`'s loop, collection is :class:`fine_cli.collector.Collector`'s,
the same object that a loop of your own calls. When the config lists a method that needs
projected features (TRAK, influence functions), they are collected after the last epoch
as well, for main, auxiliary and ``collect.features.extra_models`` more models trained
alongside (TRAK's ensemble); otherwise nothing of them is computed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fine_cli import distributed
from fine_cli.batches import TensorPairs
from fine_cli.collector import Collector
from fine_cli.config import Config, config_to_dict
from fine_cli.crossval import out_of_fold
from fine_cli.data import LoadedData, load_data
from fine_cli.errors import ConfigError
from fine_cli.features import FeatureRequest, collect, describe
from fine_cli.models import build_model
from fine_cli.needs import crossval_methods, needs_auxiliary, needs_heldout, needs_moments
from fine_cli.results import Signals, make_meta
from fine_cli.runstate import LoopState, RunDir, data_hash
from fine_cli.signal_dir import check_gram_fits
from fine_cli.training import (
    Seeds,
    apply_schedule,
    checkpoint_epochs,
    config_augment,
    derive_seeds,
    feature_methods,
    make_optimizer,
    resolve_device,
    train_epoch,
)

# progress(phase, epochs_done, epochs_total)
Progress = Callable[[str, int, int], None]
# on_checkpoint(c, epoch, [main, aux]) after checkpoint c's signals: lets tests and
# notebooks see the models whose gradients were collected.
CheckpointHook = Callable[[int, int, list[nn.Module]], None]

__all__ = [
    "CheckpointHook",
    "Progress",
    "Seeds",
    "checkpoint_epochs",
    "derive_seeds",
    "feature_methods",
    "make_optimizer",
    "read_groups",
    "resolve_device",
    "run",
    "train_epoch",
]


def _test_points(
    cfg: Config, data: LoadedData
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray, np.ndarray]:
    """Test-mode queries: (x (m, ...), y (m,), positions in the split, source indices)."""
    tp = cfg.collect.test_points
    split = data.test if tp.source == "test" else data.train
    size = split.x.shape[0]
    if tp.indices is not None:
        pos = np.asarray(tp.indices, dtype=np.int64)
        bad = pos[(pos < 0) | (pos >= size)]
        if bad.size:
            raise ConfigError(
                f"collect.test_points.indices holds {int(bad[0])}, outside the {tp.source} split "
                f"of {size} points; use positions 0..{size - 1}."
            )
    else:
        if tp.n > size:
            raise ConfigError(
                f"collect.test_points.n is {tp.n} but the {tp.source} split has {size} points; "
                "lower it."
            )
        pos = np.sort(np.random.default_rng(tp.seed).choice(size, tp.n, replace=False))
    sel = torch.as_tensor(pos)
    return split.x[sel], split.y[sel], pos, split.index[pos]


def read_groups(path: str, train_index: np.ndarray) -> list[list[int]]:
    """Groups file: JSON list of lists of source indices -> lists of training positions."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(
            f"collect.groups_file '{path}' does not exist; give a JSON list of lists."
        )
    try:
        groups = json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(
            f"collect.groups_file '{path}' is not valid JSON; give a list of lists."
        ) from None
    if (
        not isinstance(groups, list)
        or not groups
        or not all(isinstance(g, list) and g and all(isinstance(i, int) for i in g) for g in groups)
    ):
        raise ConfigError(
            f"collect.groups_file '{path}' must be a non-empty JSON list of non-empty lists of "
            "integer training indices, e.g. [[0, 5], [7]]."
        )
    where = {int(s): i for i, s in enumerate(train_index)}
    missing = [i for g in groups for i in g if i not in where]
    if missing:
        raise ConfigError(
            f"collect.groups_file '{path}' names training index {missing[0]}, which is not in "
            "the training set used (check data.n_train)."
        )
    return [[where[i] for i in g] for g in groups]


def run(
    cfg: Config,
    progress: Progress | None = None,
    on_checkpoint: CheckpointHook | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    out_dir: str | Path | None = None,
) -> Signals:
    """Train both models and collect the signals (self or test mode, by the config).

    ``run_dir``: keep the loop's state there after every checkpoint; with ``resume``,
    continue from the state found there (:mod:`fine_cli.runstate`). ``out_dir``: the
    signals directory that ``collect.storage: directory`` fills as it collects. Under
    torchrun the models train data-parallel and collection is sharded over the ranks
    (:mod:`fine_cli.distributed`); rank 0's result is the run's.
    """
    group = distributed.from_env(cfg.train.device)
    root = group is None or group.root
    device = resolve_device(cfg.train.device)
    if group is not None:
        device = distributed.device_for(group, device)
    seeds = derive_seeds(cfg)
    data = load_data(cfg.data)
    train_set = TensorPairs(data.train.x.to(device), data.train.y.to(device))
    epochs = checkpoint_epochs(cfg.train.epochs, cfg.collect.checkpoints)
    test_mode = cfg.collect.mode == "test"
    test_set, q_index, groups = None, None, None
    if test_mode:
        xq, yq, _, q_index = _test_points(cfg, data)
        test_set = TensorPairs(xq.to(device), yq.to(device))
        if cfg.collect.groups_file:
            groups = read_groups(cfg.collect.groups_file, data.train.index)

    # the auxiliary model only when the estimator reads O_hat (fine_cli/needs.py)
    n_run = 2 if needs_auxiliary(cfg) else 1
    model_seeds = [seeds.main, *([seeds.aux] if n_run == 2 else []), *seeds.extra]
    models = [
        build_model(cfg.model, data.input_shape, data.n_classes, s).to(device) for s in model_seeds
    ]
    opts = [make_optimizer(cfg, m) for m in models]
    gens = [torch.Generator().manual_seed(s) for s in model_seeds]
    directory = _storage_dir(cfg, out_dir)
    if test_set is not None:  # refuse a Gram block that cannot fit before any training
        check_gram_fits(n_run, len(epochs), len(test_set), len(data.train), directory)
    collector = Collector(
        models[0],
        models[1] if n_run == 2 else None,
        train_set,
        probe_batch_size=cfg.collect.probe_batch_size or cfg.train.batch_size,
        probe_repeats=cfg.collect.probe_repeats,
        seed=seeds.probe,
        chunk_size=cfg.collect.chunk_size,
        test_set=test_set,
        groups=groups,
        flip_mask=data.flip_mask,
        clean_labels=data.clean_train_y.numpy(),
        index=data.train.index,
        moments=needs_moments(cfg),
        heldout=_heldout(cfg, data, device),
        patience=cfg.collect.patience,
        shard=group is not None,
        out_dir=directory,
        n_checkpoints=len(epochs),
    )
    augment = config_augment(cfg)
    trainers = [distributed.wrap(m, group) for m in models]  # DDP under torchrun
    train_kw: dict[str, Any] = {
        "augment": augment,
        "precision": cfg.train.precision,
        "shard": group.shard if group is not None else None,
    }
    state = None if run_dir is None else RunDir(run_dir, _run_key(cfg, data, test_set, groups))
    loop = LoopState(state, models, opts, gens, collector, device, root)
    done, timing = loop.restore(resume)
    train_s, extra_s = timing.get("train_s", 0.0), timing.get("train_extra_s", 0.0)
    for epoch in range(done + 1, cfg.train.epochs + 1):
        if progress:
            progress("training", epoch - 1, cfg.train.epochs)
        apply_schedule(cfg, opts, epoch - 1)
        t0 = time.perf_counter()
        for model, opt, gen in zip(trainers[:n_run], opts, gens):
            train_epoch(model, opt, train_set, cfg.train.batch_size, gen, **train_kw)
        _sync(device)
        t1 = time.perf_counter()
        train_s += t1 - t0
        # the extra models serve TRAK alone: their time is counted apart
        for model, opt, gen in zip(trainers[n_run:], opts[n_run:], gens[n_run:]):
            train_epoch(model, opt, train_set, cfg.train.batch_size, gen, **train_kw)
        _sync(device)
        extra_s += time.perf_counter() - t1
        if epoch in epochs and not collector.stopped:  # collect.patience: stopped collecting
            if progress:
                progress("collecting", epoch - 1, cfg.train.epochs)
            collector.checkpoint(optimizer=opts[0], epoch=epoch)
            if on_checkpoint:
                on_checkpoint(len(collector.records) - 1, epoch, models[:n_run])
        if epoch in epochs or epoch == cfg.train.epochs:  # resumable from here on
            loop.save(epoch, {"train_s": train_s, "train_extra_s": extra_s})
    if not root:  # rank 0 holds the collected arrays and writes the output
        return Signals(arrays={}, meta=make_meta("signals", mode=collector.mode), source="rank")
    req = FeatureRequest(
        methods=feature_methods(cfg),
        proj_dim=cfg.collect.features.proj_dim,
        seed=cfg.collect.features.seed,
        chunk_size=cfg.collect.chunk_size,
        n_classes=data.n_classes,
    )
    features: dict[str, np.ndarray] = {}
    if req.wanted:
        if progress:
            progress("features", cfg.train.epochs, cfg.train.epochs)
        t0 = time.perf_counter()
        features = collect(req, models, train_set, test_set)
        _sync(device)
        req.timing["total_s"] = round(time.perf_counter() - t0, 3)
    if progress:
        progress("done", cfg.train.epochs, cfg.train.epochs)
    extra_meta = {"test_index": q_index.astype(np.int64)} if q_index is not None else {}
    signals = collector.signals(
        **extra_meta,
        config=config_to_dict(cfg),
        seeds=vars(seeds),
        dataset=data.name,
        n_classes=data.n_classes,
        input_shape=list(data.input_shape),
        test_source=cfg.collect.test_points.source if test_mode else None,
        device=str(device),
        # data parallelism under torchrun (fine_cli/distributed.py); training precision
        parallel={"processes": group.world, "backend": group.backend} if group else None,
        precision=cfg.train.precision,
        timing={
            "train_s": round(train_s, 3),
            "collect_s": round(collector.collect_s, 3),
            "train_extra_s": round(extra_s, 3),
            "models": n_run,
        },
        features=describe(req, len(models), cfg.train.epochs) if req.wanted else None,
    )
    signals.arrays.update(features)
    if crossval_methods(cfg):  # confident learning's K fold models (fine_cli/crossval.py)
        cv_arrays, cv_meta = out_of_fold(
            cfg, train_set.x, train_set.y, data.n_classes, data.input_shape
        )
        signals.arrays.update(cv_arrays)
        signals.meta["crossval"] = cv_meta
        signals.meta["timing"]["crossval_s"] = cv_meta["seconds"]
    return signals


def _storage_dir(cfg: Config, out_dir: str | Path | None) -> Path | None:
    """The directory that collection writes into (``collect.storage: directory``)."""
    if cfg.collect.storage == "memory":
        return None
    if out_dir is None:
        raise ConfigError(
            "collect.storage=directory writes the signals into a directory while collecting; "
            "name it: fine train-collect CONFIG -o signals/ (Python: out_dir=)."
        )
    return Path(out_dir)


def _run_key(
    cfg: Config, data: LoadedData, test_set: TensorPairs | None, groups: list[list[int]] | None
) -> dict[str, Any]:
    """What a run directory is bound to: the resolved config and a hash of the data."""
    parts: list[Any] = [
        data.train.x,
        data.train.y,
        data.clean_train_y,
        data.flip_mask,
        data.train.index,
    ]
    if test_set is not None:
        parts += [test_set.x, test_set.y]
    if groups is not None:
        parts += [np.asarray([len(g) for g in groups]), np.asarray([i for g in groups for i in g])]
    return {
        "command": "train-collect",
        "config": config_to_dict(cfg),
        "data_sha256": data_hash(parts),
    }


def _heldout(cfg: Config, data: LoadedData, device: torch.device) -> TensorPairs | None:
    """The held-out split whose loss the collector records (fine_cli/needs.py), if any."""
    if not needs_heldout(cfg) or len(data.test) == 0:
        return None
    return TensorPairs(data.test.x.to(device), data.test.y.to(device))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
