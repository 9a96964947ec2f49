"""What train-collect trains and records for a config: the auxiliary model, the probe
batches' second moments, the held-out loss and the cross-validation folds, each only when
the configured estimator or a listed method reads it (or the config asks for it).

The default estimator (rb, docs/statistics.md) reads the main model alone, so the
auxiliary model of Algorithm 1 is trained only for the estimators that read O_hat (alg2,
auc, std); the paper's setting is ``estimate.estimator=alg2``, or
``collect.auxiliary=true``.
"""

from __future__ import annotations

from fine_cli import registry
from fine_cli.config import Config
from fine_cli.estimators.fine import MOMENT_ESTIMATORS, NEEDS_AUX


def _fine_listed(cfg: Config) -> bool:
    return "fine" in cfg.experiment.methods or cfg.estimate.method == "fine"


def needs_auxiliary(cfg: Config) -> bool:
    """Train the auxiliary model: ``collect.auxiliary``, or null = the estimator reads O_hat."""
    if cfg.collect.auxiliary is not None:
        return cfg.collect.auxiliary
    return cfg.estimate.estimator in NEEDS_AUX


def needs_moments(cfg: Config) -> bool:
    """Self mode: record ``ip2``: ``collect.moments``, or null = the estimator is rb."""
    if cfg.collect.mode != "self":
        return False  # test mode: the Gram block holds every inner product
    if cfg.collect.moments is not None:
        return cfg.collect.moments
    return cfg.estimate.estimator in MOMENT_ESTIMATORS and _fine_listed(cfg)


def needs_heldout(cfg: Config) -> bool:
    """Record the held-out loss per checkpoint: ``collect.heldout``, or null = self mode."""
    if cfg.collect.heldout is not None:
        return cfg.collect.heldout
    return cfg.collect.mode == "self"


def crossval_methods(cfg: Config) -> set[str]:
    """The methods listed in the config whose scores need out-of-fold probabilities."""
    listed: set[str] = {*cfg.experiment.methods, cfg.estimate.method}
    return {m for m in listed if registry.get(m).crossval}


__all__ = ["crossval_methods", "needs_auxiliary", "needs_heldout", "needs_moments"]
