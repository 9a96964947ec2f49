"""Influence estimators: one registry shared by the CLI help and the estimate stage.

Every method maps a `Signals` view (and a slice of queries) to a (queries, subsets)
array of scores, larger = more influential.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fine_cli.estimators import baselines
from fine_cli.estimators.fine import influence_alg2
from fine_cli.estimators.samples import Signals, query_samples, self_samples

ScoreFn = Callable[[Signals, "slice | None"], np.ndarray]


def fine_scores(sig: Signals, queries: slice | None = None) -> np.ndarray:
    """(q, G) f-INE influence by Algorithm 2 (ALGORITHM.md's sign: positive = helps)."""
    if sig.mode == "self":
        x, y = self_samples(sig)
        return influence_alg2(x, y)[None, :]
    x, y = query_samples(sig, queries)
    q, g, n = x.shape
    return influence_alg2(x.reshape(q * g, n), y.reshape(q * g, n)).reshape(q, g)


METHODS: dict[str, ScoreFn] = {
    "fine": fine_scores,
    "tracin": baselines.tracin,
    "grad-cos": baselines.grad_cos,
    "loss": baselines.loss,
}

DESCRIPTIONS = {
    "fine": "f-INE, Algorithm 2 on the with/without-S samples (the paper's estimator)",
    "tracin": "TracIn: sum over checkpoints of lr * gradient dot product",
    "grad-cos": "LESS-style mean gradient cosine (self mode: disagreement with the data)",
    "loss": "training loss at the last checkpoint",
}

__all__ = ["DESCRIPTIONS", "METHODS", "Signals", "fine_scores"]
