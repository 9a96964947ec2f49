"""The steering check: how often a model gives the target answer to each entity's test
prompts, for a model trained with the poison against one trained without it.

A model "gives" the target answer when the answer's log-likelihood (summed over its tokens)
exceeds the alternative's: the two-way choice of a binary-choice question. Without a rise
of this rate the poison did not steer the model, and recall of the poison means nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from torch import Tensor, nn

from fine_cli.llm.train import mean_loss
from fine_cli.tasks import IGNORE_INDEX


def answer_nll(model: nn.Module, tokens: Tensor, targets: Tensor) -> np.ndarray:
    """``(m,)`` negative log-likelihood of each prompt's scored tokens (their sum)."""
    count = (targets[:, 1:] != IGNORE_INDEX).sum(1).double().numpy()
    return mean_loss(model, tokens, targets).double().numpy() * count


def target_choices(
    model: nn.Module, target: tuple[Tensor, Tensor], other: tuple[Tensor, Tensor]
) -> np.ndarray:
    """``(m,)`` bool: the model prefers the target answer to the alternative."""
    return answer_nll(model, *target) < answer_nll(model, *other)


@dataclass
class Steering:
    """Target-answer rates per entity of the clean and the poisoned model."""

    entities: list[str]
    clean: list[float]  # (E,) rate of target answers without the poison
    poisoned: list[float]  # (E,) with it
    min_increase: float  # the rise that counts as steering (a fraction, e.g. 0.2)

    @property
    def increase(self) -> list[float]:
        return [p - c for p, c in zip(self.poisoned, self.clean)]

    @property
    def steered(self) -> list[bool]:
        return [d >= self.min_increase for d in self.increase]

    def to_dict(self) -> dict[str, Any]:
        return {
            "entities": self.entities,
            "clean": self.clean,
            "poisoned": self.poisoned,
            "increase": self.increase,
            "steered": self.steered,
            "min_increase": self.min_increase,
        }


def steering(
    entities: Sequence[str],
    groups: Sequence[str],
    clean_choices: np.ndarray,
    poisoned_choices: np.ndarray,
    min_increase: float,
) -> Steering:
    """Rates per entity from per-prompt choices; ``groups`` ``(m,)`` names each prompt's
    entity."""
    g = np.asarray(groups)

    def rate(choices: np.ndarray, e: str) -> float:
        return float(np.mean(choices[g == e]))

    return Steering(
        entities=list(entities),
        clean=[rate(clean_choices, e) for e in entities],
        poisoned=[rate(poisoned_choices, e) for e in entities],
        min_increase=min_increase,
    )
