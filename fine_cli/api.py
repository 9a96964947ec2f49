"""The Python API: the four stages as functions on typed results.

    import fine_cli
    signals = fine_cli.train_collect("configs/quickstart.yaml", overrides=["train.epochs=5"])
    influence = fine_cli.estimate(signals, method="fine")
    ranking = fine_cli.rank(influence)
    report = fine_cli.evaluate_recall([ranking])

Every function takes and returns the results of :mod:`fine_cli.results`; nothing touches a
file unless asked (:func:`save`, :func:`load`). Errors are :mod:`fine_cli.errors`' classes,
each with one sentence that names the problem and the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from fine_cli import artifacts
from fine_cli.config import Config, config_from_dict
from fine_cli.config import load_config as _load_yaml
from fine_cli.estimators.options import EstimateOptions
from fine_cli.results import Influence, Ranking, Result, Signals
from fine_cli.stages import estimate as _estimate
from fine_cli.stages import evaluate as _evaluate
from fine_cli.stages import rank as _rank
from fine_cli.stages import train_collect as _train_collect
from fine_cli.stages.evaluate import RecallReport

ConfigLike = Config | str | Path | dict[str, Any]


def load_config(source: ConfigLike, overrides: Sequence[str] = ()) -> Config:
    """A validated :class:`~fine_cli.config.Config` from a YAML path, a dict or a Config,
    with ``--set``-style ``overrides`` (``"train.epochs=5"``)."""
    if isinstance(source, Config):
        if not overrides:
            return source
        from fine_cli.config import apply_overrides, config_to_dict

        return config_from_dict(apply_overrides(config_to_dict(source), list(overrides)))
    if isinstance(source, dict):
        from fine_cli.config import apply_overrides

        return config_from_dict(apply_overrides(dict(source), list(overrides)))
    return _load_yaml(source, list(overrides))


def train_collect(
    cfg: ConfigLike,
    overrides: Sequence[str] = (),
    progress: Callable[[str, int, int], None] | None = None,
    *,
    run_dir: str | Path | None = None,
    resume: bool = False,
    out_dir: str | Path | None = None,
) -> Signals:
    """Stage 1: train the main and auxiliary models of ``cfg`` and collect the signals.
    ``progress(phase, epochs_done, epochs_total)`` is called along the way. ``run_dir``
    keeps the state after every checkpoint and ``resume`` continues from it
    (docs/ARTIFACTS.md, "Run directories"); ``out_dir`` is the directory that
    ``collect.storage: directory`` fills (complete it with ``save(signals, out_dir)``)."""
    return _train_collect.run(
        load_config(cfg, overrides), progress, run_dir=run_dir, resume=resume, out_dir=out_dir
    )


def estimate(
    signals: Signals,
    method: str = "fine",
    options: EstimateOptions | None = None,
    **option_values: Any,
) -> Influence:
    """Stage 2: the influence of every (query, subset) pair by ``method`` (a name of
    :func:`fine_cli.methods`). ``options`` or keyword values (``estimator="alg2"``,
    ``checkpoints=10``, ``bootstrap=0``, ``permutations=0``, ``alternative``, ``seed``)
    set how f-INE runs."""
    opts = options or EstimateOptions()
    for key, value in option_values.items():
        if not hasattr(opts, key):
            from fine_cli.errors import ConfigError

            raise ConfigError(
                f"estimate() got an unknown option '{key}'; use one of "
                f"{', '.join(vars(EstimateOptions()))}."
            )
        setattr(opts, key, value)
    return _estimate.run(signals, method, opts)


def rank(
    influence: Influence,
    query: int | None = None,
    aggregate: str = "mean",
    fdr: float | None = None,
    null: str = "typical",
    scale: str | None = None,
) -> Ranking:
    """Stage 3: subsets ordered from most to least influential (for one test point
    ``query``, or aggregated over them); ``fdr`` = q adds a selection at that false
    discovery rate against ``null``: ``typical`` (more influential than a typical training
    point; its normal fitted on ``scale``, "linear" or "log", by default the one
    calibrated for the file's estimator) or ``zero`` (any influence at all); see
    docs/statistics.md, section 8."""
    return _rank.run(influence, query, aggregate, fdr, null, scale)  # type: ignore[arg-type]


def evaluate_recall(
    rankings: Sequence[Ranking], p_grid: Sequence[float] | None = None
) -> RecallReport:
    """Stage 4: recall of the known flipped labels in the top-p%, AUROC and AUPRC."""
    return _evaluate.run_recall(list(rankings), list(p_grid) if p_grid is not None else None)


def save(result: Result, path: str | Path) -> None:
    """Write a result as ``.npz`` atomically (``"-"`` = standard output), or as a
    directory of ``.npy`` files when ``path`` ends with ``/`` or is a directory."""
    from fine_cli import outofcore

    if outofcore.wants_dir(path):
        outofcore.save_dir(result, path)
        return
    artifacts.save(result, str(path))


def load(path: str | Path, kind: str | None = None) -> Result:
    """Read a result file, or a result directory (its arrays mapped, not read:
    :mod:`fine_cli.outofcore`); ``kind`` ("signals", "influence", "ranking", "truth") is
    checked when given, otherwise taken from the file."""
    from fine_cli import outofcore

    return outofcore.open_result(path, kind)


__all__ = [
    "estimate",
    "evaluate_recall",
    "load",
    "load_config",
    "rank",
    "save",
    "train_collect",
]
