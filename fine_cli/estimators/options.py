"""How ``estimate`` runs a method: the f-INE estimator, checkpoints, bootstrap, p-values."""

from __future__ import annotations

from dataclasses import dataclass

from fine_cli.config import ALTERNATIVES, EstimateConfig
from fine_cli.errors import ConfigError

# Option defaults come from the config schema: one source for CLI, config and stage.
_DEFAULTS = EstimateConfig()


@dataclass
class EstimateOptions:
    """How f-INE turns samples into scores, and the extras stored beside them."""

    estimator: str = _DEFAULTS.estimator  # a name of config.ESTIMATORS
    # first K checkpoints only (every method); "auto": up to the held-out loss minimum
    checkpoints: int | str | None = _DEFAULTS.checkpoints
    bootstrap: int = _DEFAULTS.bootstrap  # block-bootstrap draws for stderr; 0 = none
    permutations: int = _DEFAULTS.permutations  # swap patterns for p-values; 0 = none (default)
    alternative: str = _DEFAULTS.alternative  # two-sided, greater or less
    seed: int = _DEFAULTS.seed  # of the bootstrap and swap draws

    @classmethod
    def from_config(cls, cfg: EstimateConfig) -> EstimateOptions:
        return cls(
            estimator=cfg.estimator,
            checkpoints=cfg.checkpoints,
            bootstrap=cfg.bootstrap,
            permutations=cfg.permutations,
            alternative=cfg.alternative,
            seed=cfg.seed,
        )

    def check(self, n_checkpoints: int) -> None:
        """ConfigError, naming the option and the fix, for a value that cannot be used."""
        from fine_cli.config import ESTIMATORS

        if self.estimator not in ESTIMATORS:
            raise ConfigError(
                f"unknown estimator '{self.estimator}'; choose one of {', '.join(ESTIMATORS)}."
            )
        if self.alternative not in ALTERNATIVES:
            raise ConfigError(
                f"unknown alternative '{self.alternative}'; choose one of "
                f"{', '.join(ALTERNATIVES)}."
            )
        if self.checkpoints == "auto":
            pass
        elif isinstance(self.checkpoints, str):
            raise ConfigError(
                f"checkpoints is '{self.checkpoints}'; give a positive integer K, auto or "
                "None (all)."
            )
        elif self.checkpoints is not None and not 1 <= self.checkpoints <= n_checkpoints:
            raise ConfigError(
                f"checkpoints is {self.checkpoints} but the signals hold {n_checkpoints}; "
                f"use 1..{n_checkpoints}, or leave it unset for all."
            )
        if self.bootstrap == 1 or self.bootstrap < 0 or self.permutations < 0:
            raise ConfigError(
                f"bootstrap ({self.bootstrap}) must be 0 (none) or at least 2, and permutations "
                f"({self.permutations}) at least 0."
            )
