"""``fine evaluate distribution``: the samples O and O' of one (query, subset) pair over the
checkpoints (the paper's Fig. 11), with what each estimator makes of them.

O[c] is the main model's test gradient against the probe batch with S, O'[c] against the
other probe batch without S (ALGORITHM.md, section 2); f-INE compares the two
distributions whole, a mean-based score (LESS, TracIn) only their centres. O_hat, the
auxiliary model's term, is returned too (O~ = O - O_hat, O~' = O' - O_hat).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fine_cli.errors import ConfigError
from fine_cli.estimators.fine import ESTIMATOR_FNS, influence_rb
from fine_cli.estimators.samples import (
    AUX,
    SignalView,
    query_moments,
    query_samples,
    self_moments,
    self_samples,
)
from fine_cli.estimators.view import signal_view
from fine_cli.results import Signals


@dataclass
class Distribution:
    """O, O' and O_hat of one pair, ``(N,)`` each, N = C*R samples in checkpoint order."""

    subset: int
    query: int | None  # None in self mode
    o: np.ndarray
    o_prime: np.ndarray
    o_hat: np.ndarray
    checkpoint: np.ndarray  # (N,) 0-based checkpoint of each sample
    influence: dict[str, float]  # f-INE's score by each estimator (positive = S helps)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subset": self.subset,
            "query": self.query,
            "o": self.o.tolist(),
            "o_prime": self.o_prime.tolist(),
            "o_hat": self.o_hat.tolist(),
            "checkpoint": self.checkpoint.tolist(),
            "influence": self.influence,
            "mean_difference": float(np.mean(self.o - self.o_prime)),
        }


def distribution(signals: Signals, subset: int, query: int | None = None) -> Distribution:
    """The samples of subset ``subset`` for test point ``query`` (test mode) or for itself
    (self mode)."""
    sig = signal_view(signals)
    if sig.mode == "test":
        if query is None or not 0 <= query < sig.n_queries:
            raise ConfigError(
                f"--query must name a test point in 0..{sig.n_queries - 1} for test-mode "
                f"signals (got {query})."
            )
    elif query is not None:
        raise ConfigError("--query is for test-mode signals; these are self-mode.")
    if not 0 <= subset < sig.n_subsets:
        raise ConfigError(f"--subset must lie in 0..{sig.n_subsets - 1} (got {subset}).")
    x, y = _pair(sig, subset, query)
    o, o_prime = _pair(_main_only(sig), subset, query)
    influence = {
        name: float(fn(x[None], y[None], sig.n_repeats)[0]) for name, fn in ESTIMATOR_FNS.items()
    }
    moments = _moments(sig, subset, query)
    if moments is not None:  # rb: the probe batches integrated out, from the moments of D
        influence["rb"] = float(influence_rb(*moments)[0])
    checkpoint = np.repeat(np.arange(sig.n_checkpoints), sig.n_repeats)
    return Distribution(subset, query, o, o_prime, o - x, checkpoint, influence)


def _pair(sig: SignalView, subset: int, query: int | None) -> tuple[np.ndarray, np.ndarray]:
    """X and Y ``(N,)`` of one pair."""
    if sig.mode == "self":
        x, y = self_samples(sig)
        return x[subset], y[subset]
    assert query is not None
    x, y = query_samples(sig, slice(query, query + 1))
    return x[0, subset], y[0, subset]


def _moments(
    sig: SignalView, subset: int, query: int | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """(1, C) mean and variance of D_c for the pair, or None (self mode without ``ip2``)."""
    if sig.mode == "self":
        if sig.ip2 is None:
            return None
        m, v = self_moments(sig)
        return m[subset][None], v[subset][None]
    m, v = query_moments(sig, slice(query, (query or 0) + 1))
    return m[0, subset][None], v[0, subset][None]


def _main_only(sig: SignalView) -> SignalView:
    """``sig`` with the auxiliary model's terms zeroed, so that O_hat = 0, X = O, Y = O'."""
    from dataclasses import replace

    def zero_aux(a: np.ndarray | None) -> np.ndarray | None:
        if a is None or a.shape[0] <= AUX:
            return a
        out = a.copy()
        out[AUX] = 0.0
        return out

    return replace(
        sig,
        sqnorm=zero_aux(sig.sqnorm),  # type: ignore[arg-type]
        ip=zero_aux(sig.ip),  # type: ignore[arg-type]
        gram=zero_aux(sig.gram),
        test_ip=zero_aux(sig.test_ip),
    )
