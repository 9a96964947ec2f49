"""The built-in training loop: optimiser, learning-rate schedule, augmentation, seeds.

``fine train-collect`` and ``fine validate`` train through :func:`train_epoch`; a loop of
your own can do the same, or anything else, and call the
:class:`~fine_cli.collector.Collector` itself (examples/own_loop.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from fine_cli import registry
from fine_cli.batches import ShuffledBatches, loader, size
from fine_cli.config import Config
from fine_cli.data import LoadedData
from fine_cli.errors import ConfigError
from fine_cli.tasks import ClassificationTask, Task

# augment(x (b, ...), generator) -> x: applied to training batches only (fine_cli.augment).
AugmentFn = Callable[[Tensor, torch.Generator], Tensor]


@dataclass
class Seeds:
    """Independent seeds derived from the config's one training seed."""

    main: int
    aux: int
    probe: int
    test_points: int
    extra: list[int] = field(default_factory=list)  # TRAK-only ensemble members


def feature_methods(cfg: Config) -> set[str]:
    """The methods listed in the config whose scores need projected features."""
    listed: set[str] = {*cfg.experiment.methods, cfg.estimate.method}
    return listed & registry.feature_methods()


def derive_seeds(cfg: Config) -> Seeds:
    """Independent streams from the one training seed (no global RNG state); the first
    three do not depend on how many extra models there are."""
    n_extra = cfg.collect.features.extra_models if feature_methods(cfg) else 0
    main, aux, probe, *extra = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(cfg.seed).spawn(3 + n_extra)
    )
    return Seeds(
        main=main, aux=aux, probe=probe, test_points=cfg.collect.test_points.seed, extra=extra
    )


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when present), ``cpu``, ``cuda`` or ``cuda:N``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(
            f"train.device '{name}' is not a device; use auto, cpu or cuda."
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device is '{name}' but no CUDA device is available; use auto or cpu."
        )
    return dev


def checkpoint_epochs(epochs: int, n_checkpoints: int | None) -> np.ndarray:
    """(C,) 1-based epochs after which signals are collected, evenly spaced, ending at the last."""
    if n_checkpoints is None:
        return np.arange(1, epochs + 1, dtype=np.int64)
    if n_checkpoints > epochs:
        raise ConfigError(
            f"collect.checkpoints is {n_checkpoints} but train.epochs is only {epochs}; "
            "ask for at most one checkpoint per epoch."
        )
    return np.round(np.linspace(epochs / n_checkpoints, epochs, n_checkpoints)).astype(np.int64)


def make_optimizer(cfg: Config, model: nn.Module) -> torch.optim.Optimizer:
    t = cfg.train
    if t.optimizer == "adam":
        return torch.optim.Adam(
            model.parameters(), lr=t.lr, betas=t.betas, weight_decay=t.weight_decay
        )
    return torch.optim.SGD(
        model.parameters(), lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay
    )


def config_augment(cfg: Config) -> AugmentFn | None:
    """The config's training augmentation (``train.augment``), or None."""
    if not cfg.train.augment:
        return None
    from fine_cli.augment import build_augment

    return build_augment(cfg.train.augment)


def apply_schedule(cfg: Config, opts: list[torch.optim.Optimizer], epoch0: int) -> None:
    """Set the learning rate in force during 0-based ``epoch0`` (``train.schedule``;
    constant: left as the optimiser has it)."""
    if cfg.train.schedule == "constant":
        return
    from fine_cli.schedules import lr_at, set_lr

    lr = lr_at(cfg.train, epoch0)
    for opt in opts:
        set_lr(opt, lr)


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train_set: Dataset,
    batch: int,
    gen: torch.Generator,
    task: Task | None = None,
    augment: AugmentFn | None = None,
    *,
    precision: str = "fp32",
    shard: tuple[int, int] | None = None,
) -> None:
    """One pass over ``train_set`` in the batches of :class:`ShuffledBatches` (``gen``),
    minimising the task's mean loss over each batch.

    ``precision="bf16"``: the forward pass and the loss under bfloat16 autocast (weights,
    gradients and optimiser state stay float32). ``shard=(rank, world)``: data-parallel
    training, ``model`` wrapped in ``DistributedDataParallel``: every rank draws the same
    global batch (the same ``gen``), augments it whole, and trains on its own contiguous
    part of it; the loss is the part's sum times ``world / len(batch)``, so that DDP's mean
    over ranks is the global batch's mean loss, as in one process.
    """
    task = task if task is not None else ClassificationTask()
    model.train()
    device_type = next(model.parameters()).device.type
    for xb, yb in loader(train_set, ShuffledBatches(size(train_set), batch, gen)):
        if augment is not None:
            xb = augment(xb, gen)
        opt.zero_grad(set_to_none=False)  # reusing grad buffers: fresh allocations are slow
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            if shard is None:
                loss = task.loss(model(xb), yb).mean()
            else:
                rank, world = shard
                lo, hi = part_bounds(xb.shape[0], world)[rank : rank + 2]
                loss = task.loss(model(xb[lo:hi]), yb[lo:hi]).sum() * (world / xb.shape[0])
        loss.float().backward()
        opt.step()


def part_bounds(n: int, parts: int) -> list[int]:
    """``parts + 1`` boundaries of ``n`` items cut into contiguous parts whose sizes differ
    by at most one (the first ones larger), as ``numpy.array_split`` cuts."""
    q, r = divmod(n, parts)
    return [i * q + min(i, r) for i in range(parts + 1)]


def train_model(
    cfg: Config, data: LoadedData, x: Tensor, y: Tensor, keep: np.ndarray, seed: int
) -> nn.Module:
    """A fresh model of ``cfg`` trained as Stage 1 trains, on the points of ``x``, ``y`` (the
    training split of ``data``, already on the device) where ``keep`` (n,) is True: the
    retrainings of ``fine validate``. Returned in eval mode."""
    from fine_cli.batches import TensorPairs
    from fine_cli.models import build_model

    sel = torch.as_tensor(np.flatnonzero(keep), device=x.device)
    model = build_model(cfg.model, data.input_shape, data.n_classes, seed).to(x.device)
    opt = make_optimizer(cfg, model)
    gen = torch.Generator().manual_seed(seed)
    part = TensorPairs(x[sel], y[sel])
    augment = config_augment(cfg)
    for epoch0 in range(cfg.train.epochs):
        apply_schedule(cfg, [opt], epoch0)
        train_epoch(model, opt, part, cfg.train.batch_size, gen, ClassificationTask(), augment)
    return model.eval()


__all__ = [
    "Seeds",
    "apply_schedule",
    "checkpoint_epochs",
    "config_augment",
    "derive_seeds",
    "feature_methods",
    "make_optimizer",
    "part_bounds",
    "resolve_device",
    "train_epoch",
    "train_model",
]
