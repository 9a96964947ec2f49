"""What a training example's loss is, and what is measured on a test point.

A :class:`Task` turns a model's outputs on a batch into per-sample quantities. The gradient
engine, the training loop, the collector and ``fine validate`` call a task instead of a loss
function of their own, so that one code path serves classification, language models and
whatever a user defines:

- ``loss(outputs, targets)``: ``(n,)`` per-sample training loss; its gradient is ``g(z)``;
- ``measurement(outputs, targets)``: ``(n,)`` what is measured on a test point (f-INE's test
  statistic, and the outcome of retraining checks); by default the loss itself;
- ``margin(outputs, targets)``: ``(n,)`` a confidence, larger = better fitted (the ``margin``
  baseline: true-class logit minus the best other logit).

``outputs`` is whatever ``model(x)`` returns, ``targets`` what the dataset gives as its second
element. Samples must not interact (no batch statistics in the loss), because per-sample
quantities are computed a chunk at a time.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor

# Label value that SequenceTask leaves out of the loss (the value Hugging Face uses).
IGNORE_INDEX = -100


@runtime_checkable
class Task(Protocol):
    """The per-sample functions that the engine, training and validation call."""

    name: str

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``(n,)`` per-sample training loss."""
        ...

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``(n,)`` the quantity measured on test points."""
        ...

    def margin(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """``(n,)`` larger = better fitted."""
        ...


class ClassificationTask:
    """Softmax cross-entropy on ``(n, C)`` logits and ``(n,)`` integer labels."""

    name = "classification"

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs, targets, reduction="none")

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs, targets)

    def margin(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """True-class logit minus the largest other logit (negative = misclassified)."""
        true = outputs.gather(1, targets[:, None]).squeeze(1)
        others = outputs.scatter(1, targets[:, None], float("-inf"))
        return true - others.max(1).values

    def output_function(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """TRAK's ``f = log(p / (1 - p)) = z_y - logsumexp_{c != y} z_c``, ``(n,)``."""
        true = outputs.gather(1, targets[:, None]).squeeze(1)
        others = outputs.scatter(1, targets[:, None], float("-inf"))
        return true - torch.logsumexp(others, dim=1)


class SequenceTask:
    """Token-level cross-entropy of a causal language model.

    ``outputs``: ``(n, T, V)`` logits (or an object with a ``.logits`` attribute, as Hugging
    Face models return); ``targets``: ``(n, T)`` token ids, ``IGNORE_INDEX`` where a token is
    not scored (the prompt, padding). With ``shift`` (the default, as for causal LMs) the
    logits at position ``t`` predict the target at ``t + 1``. A sample's loss is the mean
    over its scored tokens (0 when it has none).
    """

    name = "sequence"

    def __init__(self, shift: bool = True, ignore_index: int = IGNORE_INDEX) -> None:
        self.shift = shift
        self.ignore_index = ignore_index

    def _token_terms(self, outputs: Tensor, targets: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(n, T')`` logits, targets and 0/1 mask of the scored positions."""
        logits = getattr(outputs, "logits", outputs)
        if self.shift:
            logits, targets = logits[:, :-1], targets[:, 1:]
        mask = targets != self.ignore_index
        return logits, targets.masked_fill(~mask, 0), mask.to(logits.dtype)

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        logits, tgt, mask = self._token_terms(outputs, targets)
        nll = F.cross_entropy(logits.transpose(1, 2), tgt, reduction="none")  # (n, T')
        return (nll * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs, targets)

    def margin(self, outputs: Tensor, targets: Tensor) -> Tensor:
        """Mean over scored tokens of the true-token logit minus the best other logit."""
        logits, tgt, mask = self._token_terms(outputs, targets)
        true = logits.gather(2, tgt[..., None]).squeeze(2)
        others = logits.scatter(2, tgt[..., None], float("-inf")).max(2).values
        return ((true - others) * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class OutputFunctionTask:
    """A classification task whose "loss" is TRAK's output function ``f``, so that the
    engine's per-sample gradients are ``grad f`` (TRAK's features)."""

    name = "output-function"

    def __init__(self, base: ClassificationTask | None = None) -> None:
        self.base = base or ClassificationTask()

    def loss(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.base.output_function(outputs, targets)

    def measurement(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.loss(outputs, targets)

    def margin(self, outputs: Tensor, targets: Tensor) -> Tensor:
        return self.base.margin(outputs, targets)


__all__ = ["IGNORE_INDEX", "ClassificationTask", "OutputFunctionTask", "SequenceTask", "Task"]
