"""Influence estimators: one registry shared by the CLI help and the estimate stage.

Every method maps a `Signals` view (and a slice of queries) to a (queries, subsets)
array of scores, larger = more influential.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fine_cli.config import DEFAULT_ESTIMATOR
from fine_cli.estimators import baselines, influence_functions, trak
from fine_cli.estimators.fine import ESTIMATOR_FNS
from fine_cli.estimators.samples import Signals, query_samples, self_samples

ScoreFn = Callable[[Signals, "slice | None"], np.ndarray]


def fine_scores(
    sig: Signals, queries: slice | None = None, estimator: str = DEFAULT_ESTIMATOR
) -> np.ndarray:
    """(q, G) f-INE influence by ``estimator`` (ALGORITHM.md's sign: positive = helps)."""
    fn = ESTIMATOR_FNS[estimator]
    if sig.mode == "self":
        x, y = self_samples(sig)
        return fn(x, y, sig.n_repeats)[None, :]
    x, y = query_samples(sig, queries)
    q, g, n = x.shape
    return fn(x.reshape(q * g, n), y.reshape(q * g, n), sig.n_repeats).reshape(q, g)


METHODS: dict[str, ScoreFn] = {
    "fine": fine_scores,
    "tracin": baselines.tracin,
    "grad-cos": baselines.grad_cos,
    "loss": baselines.loss,
    "margin": baselines.margin,
    "trak": trak.trak,
    "if": influence_functions.influence,
}

DESCRIPTIONS = {
    "fine": "f-INE: mu from the with/without-S samples (--estimator; docs/statistics.md)",
    "tracin": "TracIn: sum over checkpoints of lr * gradient dot product",
    "grad-cos": "LESS-style mean gradient cosine (self mode: disagreement with the data)",
    "loss": "training loss at the last checkpoint",
    "margin": "minus the margin (label logit - best other logit) at the last checkpoint",
    "trak": "TRAK: projected output-function gradients, kernel inverse, the run's models",
    "if": "influence functions: projected loss gradients, damped Gauss-Newton inverse",
}

__all__ = ["DESCRIPTIONS", "METHODS", "Signals", "fine_scores"]
