"""``fine evaluate tradeoff``: the empirical trade-off curve of one subset, with the fitted
Gaussian curves G_mu (the paper's Fig. 4).

The samples X = O~ (with S, distribution P) and Y = O~' (without S, Q) of one (query,
subset) pair are two samples of the test statistic. A threshold test that rejects
"trained with S" on the side where Q lies has, at every threshold t,

    S helps (influence >= 0, X tends above Y): reject when the value is <= t,
        alpha_t = mean(X <= t),  beta_t = mean(Y > t);
    otherwise: reject when the value is >= t,
        alpha_t = mean(X >= t),  beta_t = mean(Y < t).

The empirical curve joins these points in order of alpha (a segment between two tests is
a randomised mix of them); the fitted curve of an estimate mu is
G_|mu|(alpha) = Phi(Phi^-1(1 - alpha) - |mu|).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from fine_cli.errors import ConfigError
from fine_cli.estimators.fine import ESTIMATOR_FNS, NEEDS_AUX
from fine_cli.estimators.samples import first_checkpoints, query_samples, self_samples
from fine_cli.estimators.view import signal_view
from fine_cli.results import Signals


@dataclass
class TradeoffCurve:
    """The empirical curve of one (query, subset) pair and the estimators' mu."""

    subset: int  # position of the subset
    query: int | None  # test point position (test mode), None in self mode
    train_index: int  # source index of a single-point subset, else -1
    flipped: bool  # the subset holds a flipped point
    n_samples: int  # N per side
    alpha: np.ndarray  # (T,) type-I errors, ascending
    beta: np.ndarray  # (T,) type-II errors at those alphas
    mu: dict[str, float]  # estimator -> influence (project sign)

    def to_dict(self) -> dict[str, Any]:
        return {
            "subset": self.subset,
            "query": self.query,
            "train_index": self.train_index,
            "flipped": self.flipped,
            "n_samples": self.n_samples,
            "alpha": self.alpha.tolist(),
            "beta": self.beta.tolist(),
            "mu": self.mu,
        }


def empirical_tradeoff(x: np.ndarray, y: np.ndarray, helps: bool) -> tuple[np.ndarray, np.ndarray]:
    """(alpha, beta), each (T,), of the threshold tests at every pooled value plus the two
    trivial tests (alpha 0 / beta 1 and alpha 1 / beta 0), sorted by alpha; x (Nx,), y (Ny,)."""
    t = np.unique(np.concatenate([x, y]))
    if helps:
        alpha = (x[None, :] <= t[:, None]).mean(axis=1)
        beta = (y[None, :] > t[:, None]).mean(axis=1)
    else:
        alpha = (x[None, :] >= t[:, None]).mean(axis=1)
        beta = (y[None, :] < t[:, None]).mean(axis=1)
    alpha = np.concatenate([[0.0], alpha, [1.0]])
    beta = np.concatenate([[1.0], beta, [0.0]])
    order = np.lexsort((-beta, alpha))  # along the thresholds: alpha up, beta down
    return alpha[order], beta[order]


def gaussian_tradeoff(alpha: np.ndarray, mu: float) -> np.ndarray:
    """G_|mu|(alpha) = Phi(Phi^-1(1 - alpha) - |mu|), (T,) for alpha (T,)."""
    return stats.norm.cdf(stats.norm.ppf(1.0 - alpha) - abs(mu))


def run(
    signals: Signals, subset: int, query: int | None = None, checkpoints: int | None = None
) -> TradeoffCurve:
    """The trade-off curve of subset ``subset`` (for test point ``query`` in test mode)."""
    sig = signal_view(signals)
    if checkpoints is not None:
        if not 1 <= checkpoints <= sig.n_checkpoints:
            raise ConfigError(
                f"--checkpoints {checkpoints} is out of range; the signals hold "
                f"{sig.n_checkpoints} (use 1..{sig.n_checkpoints})."
            )
        sig = first_checkpoints(sig, checkpoints)
    if not 0 <= subset < sig.n_subsets:
        raise ConfigError(
            f"--subset {subset} is out of range: the signals have {sig.n_subsets} subsets "
            f"(0..{sig.n_subsets - 1})."
        )
    if sig.mode == "self":
        if query is not None:
            raise ConfigError("--query applies to test-mode signals; these are in self mode.")
        x_all, y_all = self_samples(sig)
        x, y = x_all[subset], y_all[subset]
    else:
        if query is None or not 0 <= query < sig.n_queries:
            raise ConfigError(
                f"test-mode signals need --query in 0..{sig.n_queries - 1} (the test point)."
            )
        xq, yq = query_samples(sig, slice(query, query + 1))
        x, y = xq[0, subset], yq[0, subset]
    # the estimators of samples; without the auxiliary model only paired's D is meaningful
    names = [n for n in ESTIMATOR_FNS if n not in NEEDS_AUX or sig.has_aux]
    mu = {name: float(ESTIMATOR_FNS[name](x[None], y[None], sig.n_repeats)[0]) for name in names}
    # the side of the test: rank-based (auc), so unaffected by alg2's bias; else paired's
    helps = mu.get("auc", mu["paired"]) >= 0.0
    alpha, beta = empirical_tradeoff(x, y, helps)
    ptr, members = sig.groups()
    single = ptr[subset + 1] - ptr[subset] == 1
    pos = members[ptr[subset] : ptr[subset + 1]]
    return TradeoffCurve(
        subset=subset,
        query=query,
        train_index=int(signals["train_index"][pos[0]]) if single else -1,
        flipped=bool(np.asarray(signals["flip_mask"])[pos].any()),
        n_samples=int(x.size),
        alpha=alpha,
        beta=beta,
        mu=mu,
    )
