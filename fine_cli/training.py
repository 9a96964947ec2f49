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
from fine_cli.batches import ShuffledBatches, loader
from fine_cli.config import Config
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


def train_epoch(
    model: nn.Module,
    opt: torch.optim.Optimizer,
    train_set: Dataset,  # type: ignore[type-arg]
    batch: int,
    gen: torch.Generator,
    task: Task | None = None,
    augment: AugmentFn | None = None,
) -> None:
    """One pass over ``train_set`` in the batches of :class:`ShuffledBatches` (``gen``),
    minimising the task's mean loss over each batch."""
    task = task if task is not None else ClassificationTask()
    model.train()
    for xb, yb in loader(train_set, ShuffledBatches(len(train_set), batch, gen)):  # type: ignore[arg-type]
        if augment is not None:
            xb = augment(xb, gen)
        opt.zero_grad(set_to_none=False)  # reusing grad buffers: fresh allocations are slow
        loss = task.loss(model(xb), yb).mean()
        loss.backward()
        opt.step()


__all__ = [
    "Seeds",
    "checkpoint_epochs",
    "derive_seeds",
    "feature_methods",
    "make_optimizer",
    "resolve_device",
    "train_epoch",
]
