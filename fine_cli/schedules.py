"""Learning-rate schedules over epochs, as pure functions of the config (``train.schedule``).

The rate is set once per epoch (not per step), so every checkpoint of an epoch was trained
under one known rate, which the signals record.
"""

from __future__ import annotations

import math

import torch

from fine_cli.config import TrainConfig


def lr_at(train_cfg: TrainConfig, epoch: int) -> float:
    """The learning rate in force during 0-based ``epoch``.

    constant: lr; cosine: lr * 0.5 * (1 + cos(pi * epoch / epochs)) (lr at epoch 0, never 0
    within the run); step: lr * gamma ** (epoch // step_size).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0; got {epoch}.")
    lr = train_cfg.lr
    if train_cfg.schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * epoch / train_cfg.epochs))
    if train_cfg.schedule == "step":
        return lr * train_cfg.gamma ** (epoch // train_cfg.step_size)
    return lr


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``optimizer``."""
    for group in optimizer.param_groups:
        group["lr"] = lr
