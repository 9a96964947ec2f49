"""Training of language models: full pre-training of a tiny base model, and LoRA
fine-tuning of several models side by side with evenly spaced checkpoints.

Batches minimise the mean over their instructions of each instruction's mean token loss
(``SequenceTask``), in the order of :class:`~fine_cli.batches.ShuffledBatches` drawn from
each model's own seed. A batch is cut to its longest sequence first: right padding has no
effect on the loss (see :mod:`.data`), and shorter batches are faster.

Checkpoints are C optimiser steps evenly spaced over the whole run, within or across
epochs (``checkpoint_steps``); at each, the callback sees the models after that step and
the learning rate of the step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from fine_cli.batches import ShuffledBatches
from fine_cli.errors import ConfigError, RunError
from fine_cli.tasks import IGNORE_INDEX, SequenceTask

TASK = SequenceTask()


def checkpoint_steps(total_steps: int, n_checkpoints: int) -> np.ndarray:
    """(C,) 1-based optimiser steps after which signals are collected, evenly spaced,
    the last one after the last step."""
    if not 1 <= n_checkpoints <= total_steps:
        raise ConfigError(
            f"llm.collect.checkpoints is {n_checkpoints} but training takes {total_steps} "
            "steps; ask for at most one checkpoint per step (raise llm.train.epochs or lower "
            "the checkpoints)."
        )
    return np.round(np.linspace(total_steps / n_checkpoints, total_steps, n_checkpoints)).astype(
        np.int64
    )


@dataclass
class Schedule:
    """Learning rate of each 0-based step: linear warm-up over ``warmup`` of the steps,
    then constant or linear decay to zero."""

    lr: float
    total_steps: int
    kind: str = "constant"  # or "linear"
    warmup: float = 0.0

    def at(self, step: int) -> float:
        ramp = math.ceil(self.warmup * self.total_steps)
        if step < ramp:
            return self.lr * (step + 1) / ramp
        if self.kind == "linear":
            left = self.total_steps - ramp
            return self.lr * max(0.0, (self.total_steps - step) / max(1, left))
        return self.lr


def trim(tokens: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """The batch cut to its longest sequence (trailing positions without a target and
    beyond every sequence's end)."""
    scored = (targets != IGNORE_INDEX).any(0).nonzero()
    end = int(scored.max()) + 1 if scored.numel() else tokens.shape[1]
    return tokens[:, :end], targets[:, :end]


class Run:
    """One model being trained: its optimiser, its batches and their order."""

    def __init__(
        self,
        model: nn.Module,
        tokens: Tensor,
        targets: Tensor,
        batch_size: int,
        seed: int,
        lr: float,
        betas: tuple[float, float],
        weight_decay: float,
    ) -> None:
        self.model = model
        self.tokens, self.targets = tokens, targets
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(
            self.params, lr=lr, betas=betas, weight_decay=weight_decay
        )
        gen = torch.Generator().manual_seed(seed)
        self.sampler = ShuffledBatches(tokens.shape[0], batch_size, gen)
        self._batches: list[list[int]] = []

    def steps_per_epoch(self) -> int:
        return len(self.sampler)

    def step(self, lr: float) -> float:
        """One optimiser step on the next batch (a new permutation after each pass)."""
        if not self._batches:
            self._batches = list(self.sampler)[::-1]
        idx = torch.as_tensor(self._batches.pop())
        xb, yb = trim(self.tokens[idx], self.targets[idx])
        device = self.params[0].device
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        self.optimizer.zero_grad(set_to_none=False)
        loss = TASK.loss(self.model(xb.to(device)), yb.to(device)).mean()
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise RunError("training diverged (non-finite loss); lower llm.train.lr.")
        return value


def train(
    runs: Sequence[Run],
    epochs: int,
    schedule: Schedule,
    at_checkpoint: Callable[[int, float], None] | None = None,
    checkpoints: np.ndarray | None = None,
) -> None:
    """``epochs`` passes of every run, step by step in lockstep; after each step in
    ``checkpoints`` (1-based), ``at_checkpoint(step, lr)``."""
    total = epochs * runs[0].steps_per_epoch()
    marks = set() if checkpoints is None else {int(s) for s in checkpoints}
    for step in range(total):
        lr = schedule.at(step)
        for run in runs:
            run.step(lr)
        if at_checkpoint is not None and step + 1 in marks:
            at_checkpoint(step + 1, lr)


def mean_loss(model: nn.Module, tokens: Tensor, targets: Tensor, chunk: int = 256) -> Tensor:
    """``(n,)`` per-sample loss in eval mode, without gradients."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    device = next(model.parameters()).device
    out = []
    try:
        with torch.no_grad():
            for s in range(0, tokens.shape[0], chunk):
                xb, yb = trim(tokens[s : s + chunk], targets[s : s + chunk])
                out.append(TASK.loss(model(xb.to(device)), yb.to(device)).float().cpu())
    finally:
        for m, flag in flags:
            m.training = flag
    return torch.cat(out)
