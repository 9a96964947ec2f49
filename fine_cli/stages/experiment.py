"""``fine run``: the mislabel experiment over every seed and method, in one call.

For each seed of ``experiment.seeds`` the four stages run in turn and leave one RUN
directory ``<out>/seed-<seed>/`` holding ``signals.npz``, ``influence-<method>.npz`` and
``ranking-<method>.npz`` for every method of ``experiment.methods`` (the layout that
``fine evaluate consistency|variability`` reads). Then recall (per seed), consistency and
variability (across seeds) are measured. Returns an :class:`ExperimentResult`; the report
(markdown and figures) is :mod:`fine_cli.report`'s.

Times are measured inside the process (no start-up or file costs): training and
collection from the signals' metadata, estimation and ranking around the stage calls.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli.artifacts import load_signals, may_replace, save
from fine_cli.config import Config, config_from_dict, config_to_dict
from fine_cli.errors import ConfigError, RunError
from fine_cli.results import Ranking, Signals
from fine_cli.runstate import RunDir
from fine_cli.stages import estimate, evaluate, rank, train_collect
from fine_cli.stages.evaluate import AcrossRunsReport, RecallReport

# message(text): one line of progress per step; epoch_progress: train-collect's callback.
Message = Callable[[str], None]
EpochProgress = Callable[[str, int, int], None]


@dataclass
class SeedRun:
    """One training seed: where its files are and what each step cost (seconds)."""

    seed: int
    directory: str
    reused: bool  # signals taken from an earlier run of the same config
    train_s: float  # main + auxiliary models
    collect_s: float  # f-INE / TracIn signals of both models, every checkpoint
    train_extra_s: float  # models trained for TRAK's ensemble only
    features: dict[str, float]  # feature collection, by part (fine_cli/features.py)
    estimate_s: dict[str, float]  # by method: `fine estimate` + `fine rank`
    crossval_s: float = 0.0  # the K fold models of confident learning (fine_cli/crossval.py)
    models: int = 2  # models trained side by side in train_s: main (+ auxiliary)


@dataclass
class ExperimentResult:
    """Everything the report needs."""

    name: str
    config: dict[str, Any]  # resolved config (seed of the first run)
    methods: list[str]
    runs: list[SeedRun]
    recall: list[RecallReport]  # (seeds,) one report per seed, methods in order
    consistency: AcrossRunsReport
    variability: AcrossRunsReport
    data: dict[str, Any] = field(default_factory=dict)  # n, flipped, dataset

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def run(
    cfg: Config,
    out_dir: str | Path,
    reuse: bool = False,
    message: Message | None = None,
    epoch_progress: EpochProgress | None = None,
    warn: Message | None = None,
    resume: bool = False,
) -> ExperimentResult:
    """Run every seed and method of ``cfg.experiment``; see the module docstring.

    With ``reuse``, a seed whose ``signals.npz`` was made by the same resolved config is
    not trained again (its recorded training times are reported). Each seed's
    train-collect keeps its state in ``seed-<seed>/signals.npz.run`` until its signals are
    written; ``resume`` reuses finished seeds as ``reuse`` does and continues an
    interrupted one from that state (fine_cli/runstate.py). ``warn`` receives the
    estimates' warnings (too few samples, undefined standard errors), once each.
    """
    seeds = list(cfg.experiment.seeds)
    methods: list[str] = list(dict.fromkeys(cfg.experiment.methods))
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"experiment.seeds is {seeds}; give at least two different seeds, e.g. [0, 1, 2], "
            "so that runs can be compared."
        )
    if cfg.collect.mode != "self":
        raise ConfigError(
            "fine run measures mislabel detection by self-influence; set collect.mode=self."
        )
    if cfg.data.label_noise <= 0:
        raise ConfigError("fine run needs flipped labels to find; set data.label_noise above 0.")
    out = Path(out_dir)
    for seed in seeds:  # a bad --out-dir fails now, not after the first seed's training
        _make_dir(out / f"seed-{seed}")
    runs: list[SeedRun] = []
    recall: list[RecallReport] = []
    warned: set[str] = set()
    for seed in seeds:
        seed_cfg = config_from_dict({**config_to_dict(cfg), "seed": seed})
        directory = out / f"seed-{seed}"
        say = message or (lambda _: None)
        say(f"seed {seed}: {directory}")
        sig, reused = _signals(seed_cfg, directory, reuse or resume, say, epoch_progress, resume)
        est: dict[str, float] = {}
        rankings = []
        for method in methods:
            ranking, est[method], warnings = _estimate_and_rank(sig, method, seed_cfg, directory)
            for text in warnings:
                if warn is not None and text not in warned:
                    warn(f"{method}: {text}")
                    warned.add(text)
            say(f"seed {seed}: {method} estimated and ranked in {est[method]:.2f} s")
            rankings.append(ranking)
        recall.append(evaluate.run_recall(rankings, list(cfg.evaluate.p_grid)))
        t = sig.meta.get("timing", {})
        feats = (sig.meta.get("features") or {}).get("timing", {})
        runs.append(
            SeedRun(
                seed=seed,
                directory=str(directory),
                reused=reused,
                train_s=float(t.get("train_s", float("nan"))),
                collect_s=float(t.get("collect_s", float("nan"))),
                train_extra_s=float(t.get("train_extra_s", 0.0)),
                features={k: float(v) for k, v in feats.items()},
                estimate_s=est,
                crossval_s=float(t.get("crossval_s", 0.0)),
                models=int(t.get("models", 2)),
            )
        )
    dirs = [r.directory for r in runs]
    by_method = evaluate.load_runs(dirs, methods)
    grid = list(cfg.evaluate.p_grid)
    first = recall[0].rankings[0]
    return ExperimentResult(
        name=cfg.name,
        config=config_to_dict(config_from_dict({**config_to_dict(cfg), "seed": seeds[0]})),
        methods=methods,
        runs=runs,
        recall=recall,
        consistency=evaluate.run_consistency(by_method, grid, dirs),
        variability=evaluate.run_variability(by_method, grid, dirs),
        data={"dataset": cfg.data.dataset, "n": first.n, "n_flipped": first.n_flipped},
    )


def _signals(
    cfg: Config,
    directory: Path,
    reuse: bool,
    say: Message,
    epoch_progress: EpochProgress | None,
    resume: bool = False,
) -> tuple[Signals, bool]:
    path = directory / "signals.npz"
    run_dir = directory / "signals.npz.run"
    if reuse and path.is_file():
        old = load_signals(str(path))
        if old.meta.get("config") == config_to_dict(cfg):
            say(f"seed {cfg.seed}: reusing {path}")
            return old, True
        say(f"seed {cfg.seed}: {path} was made by another config; training again")
        may_replace(path)  # the RUN directory is this command's own: its old signals go
    signals = train_collect.run(cfg, epoch_progress, run_dir=run_dir, resume=resume)
    save(signals, str(path))
    RunDir(run_dir, {}).remove()
    signals.source = str(path)
    t = signals.meta["timing"]
    say(
        f"seed {cfg.seed}: trained in {t['train_s']:.1f} s, signals collected in "
        f"{t['collect_s']:.1f} s"
    )
    return signals, False


def _make_dir(directory: Path) -> None:
    """Create a RUN directory, or refuse one that cannot be (a file in the way, no
    permission, read-only) with the fix."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(
            f"cannot create run directory '{directory}': {err.strerror}; pass another --out-dir."
        ) from None
    if not os.access(directory, os.W_OK):
        raise RunError(f"run directory '{directory}' is not writable; pass another --out-dir.")


def _estimate_and_rank(
    sig: Signals, method: str, cfg: Config, directory: Path
) -> tuple[Ranking, float, list[str]]:
    """``fine estimate`` (the config's estimate options) then ``fine rank``, in memory; both
    results saved beside the signals; returns the ranking, the seconds spent in the two
    stages (files excluded) and the estimate's warnings."""
    t0 = time.perf_counter()
    influence = estimate.run(sig, method, estimate.EstimateOptions.from_config(cfg.estimate))
    seconds = time.perf_counter() - t0
    inf_path = directory / f"influence-{method}.npz"
    save(influence, str(inf_path))
    influence.source = str(inf_path)
    t0 = time.perf_counter()
    ranking = rank.run(influence)
    seconds += time.perf_counter() - t0
    r_path = directory / f"ranking-{method}.npz"
    save(ranking, str(r_path))
    ranking.source = str(r_path)
    return ranking, round(seconds, 3), list(influence.meta.get("warnings", []))


def mean_sd(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0 for one value) of finite values."""
    a = np.asarray([v for v in values if np.isfinite(v)], dtype=np.float64)
    if a.size == 0:
        return float("nan"), float("nan")
    return float(a.mean()), float(a.std(ddof=1)) if a.size > 1 else 0.0
