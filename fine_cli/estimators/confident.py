"""Confident learning (Northcutt et al. 2021) with the ``cleanlab`` package: the most used
tool for finding label errors, as a baseline beside f-INE.

Train-collect trains ``collect.crossval.folds`` models, each on all folds but one, and
stores every training point's out-of-fold predicted probabilities (:mod:`fine_cli.crossval`)
when the config lists ``confident``. The score of a point is one minus cleanlab's
label-quality score (``cleanlab.rank.get_label_quality_scores``) of its observed label
under those probabilities; a subset's score is the mean over its members. Larger = more
likely a label error, the sign of the other self-influence scores. Self mode only: a label
quality says nothing about a point's influence on a test point.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_cli.errors import ConfigError, InputFileError
from fine_cli.estimators.samples import SignalView, _times, membership
from fine_cli.registry import Method, register

# cleanlab's label-quality score. Its default, self_confidence (p of the observed label),
# is also the best of its three on the retraining truth (docs/statistics.md, section 2b).
QUALITY_METHOD = "self_confidence"


def require(sig: SignalView) -> None:
    """Refuse, with the fix, signals without out-of-fold probabilities or in test mode."""
    if sig.mode != "self":
        raise ConfigError(
            "method 'confident' scores the label of each training point (self mode); these "
            "signals are in test mode. Use it with collect.mode=self."
        )
    if sig.oof_probs is None or sig.labels is None:
        raise InputFileError(
            "method 'confident' needs out-of-fold probabilities, which these signals lack: "
            "train-collect trains the K fold models only when the config lists the method; "
            "re-run it with --set 'experiment.methods=[fine, tracin, confident]' (or add "
            "'confident' to experiment.methods in the config)."
        )


def label_quality(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(n,) cleanlab's label-quality score of ``labels`` (n,) under ``probs`` (n, K)."""
    try:
        from cleanlab.rank import get_label_quality_scores
    except ImportError:  # pragma: no cover - a core dependency; broken installs only
        raise ConfigError(
            "method 'confident' needs the cleanlab package; pip install cleanlab."
        ) from None
    p = probs.astype(np.float64)
    p /= p.sum(axis=1, keepdims=True)  # float32 rounding: cleanlab wants rows summing to 1
    return np.asarray(get_label_quality_scores(labels, p, method=QUALITY_METHOD), np.float64)


def confident(sig: SignalView, queries: slice | None = None, options: Any = None) -> np.ndarray:
    """(1, G) one minus the label quality, mean over each subset's members."""
    require(sig)
    assert sig.oof_probs is not None and sig.labels is not None
    per_point = 1.0 - label_quality(sig.labels, sig.oof_probs)
    ptr, members = sig.groups()
    mem = membership(ptr, members, sig.n_train)
    return _times(per_point[None, :], mem) / np.diff(ptr).astype(np.float64)


def _meta(sig: SignalView, options: Any) -> dict[str, Any]:
    return {"quality": QUALITY_METHOD, "package": "cleanlab"}


register(
    Method(
        name="confident",
        description="confident learning: 1 - cleanlab's label quality of out-of-fold probabilities",
        score=confident,
        crossval=True,
        meta=_meta,
        cost="crossval",
        order=7,
    )
)
