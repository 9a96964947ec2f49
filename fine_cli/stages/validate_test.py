"""``fine validate`` in test mode: test-point attribution against retraining.

M models of the config's architecture and training are trained on random halves of the
training *groups* (``collect.groups_file``, or a random partition into groups of
``validation.group_size`` points), each group in exactly half of the models, and each half
of the models balanced on its own (:func:`fine_cli.datamodels.balanced_design`). Each
model's outcome on each test point (``validation.outcome``: the margin, or minus the loss,
so that larger is better) gives two truths (:mod:`fine_cli.datamodels`): the linear
datamodeling score (LDS) of a method's group scores, and mu_true(q, G), f-INE's own
definition measured directly. Every method is scored on signals collected in test mode
with the same groups and test points.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_cli import datamodels
from fine_cli.config import Config, config_from_dict, config_to_dict
from fine_cli.data import LoadedData, load_data
from fine_cli.errors import ConfigError, InputFileError
from fine_cli.estimators.fine_method import available_estimators
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.view import signal_view
from fine_cli.results import Signals, Truth, make_meta
from fine_cli.runstate import RunDir, cached_signals, cached_step
from fine_cli.stages import estimate, train_collect
from fine_cli.tasks import ClassificationTask
from fine_cli.training import resolve_device, train_model

# progress(models_done, models_total)
Progress = Callable[[int, int], None]
TASK = ClassificationTask()
TEST_TRUTH_ARRAYS = ("design", "outcome", "mu_true", "test_index", "group_ptr", "group_members")


def make_groups(cfg: Config, data: LoadedData) -> list[list[int]]:
    """Training positions of each group: the config's groups file, or a random partition
    into groups of ``validation.group_size`` points (seed ``validation.seed``)."""
    if cfg.collect.groups_file:
        return train_collect.read_groups(cfg.collect.groups_file, data.train.index)
    n, size = len(data.train), cfg.validation.group_size
    if size > n // 4:
        raise ConfigError(
            f"validation.group_size is {size} but the training set has {n} points; use at "
            f"most {n // 4} so that there are at least 4 groups."
        )
    perm = np.random.default_rng([3, cfg.validation.seed]).permutation(n)
    # n // size groups covering every point (sizes differ by at most one)
    return [sorted(part.tolist()) for part in np.array_split(perm, n // size)]


def _outcome(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """(m,) larger = better for the test point."""
    if kind == "margin":
        return TASK.margin(logits, y)
    return -TASK.loss(logits, y)


def run_truth(cfg: Config, progress: Progress | None = None, run: RunDir | None = None) -> Truth:
    """Train ``validation.models`` models on balanced halves of the groups; returns the
    test-mode truth (design, outcomes, mu_true) as a :class:`~fine_cli.results.Truth`."""
    m_models = cfg.validation.models
    if m_models % 4 or m_models < 8:
        raise ConfigError(
            f"validation.models is {m_models}; test-mode validation needs a multiple of 4 "
            "(two balanced halves), at least 8."
        )
    device = resolve_device(cfg.train.device)
    data = load_data(cfg.data)
    groups = make_groups(cfg, data)
    ptr = np.cumsum([0] + [len(g) for g in groups]).astype(np.int64)
    members = np.array([i for g in groups for i in g], dtype=np.int64)
    xq, yq, _, q_index = train_collect._test_points(cfg, data)
    seqs = np.random.SeedSequence([7, cfg.validation.seed]).spawn(m_models + 1)
    seeds = [int(s.generate_state(1)[0]) for s in seqs[:m_models]]
    design = datamodels.balanced_design(m_models, len(groups), np.random.default_rng(seqs[-1]))
    keep = datamodels.point_mask(design, ptr, members, len(data.train))
    x, y = data.train.x.to(device), data.train.y.to(device)
    outcome = np.zeros((m_models, xq.shape[0]), np.float64)

    def one_model(i: int, seed: int) -> tuple[np.ndarray]:
        model = train_model(cfg, data, x, y, keep[i], seed)
        with torch.no_grad():
            logits = model(xq.to(device)).double()
            return (_outcome(logits, yq.to(device), cfg.validation.outcome).cpu().numpy(),)

    for i, seed in enumerate(seeds):
        if progress:
            progress(i, m_models)
        # with a run directory, a model trained before an interruption is not trained again
        outcome[i] = cached_step(run, f"model-{i:05d}", ("outcome",), partial(one_model, i, seed))[
            0
        ]
    if progress:
        progress(m_models, m_models)
    arrays = {
        "design": design,
        "outcome": outcome,
        "mu_true": datamodels.group_truth(outcome, design),
        "test_index": q_index.astype(np.int64),
        "group_ptr": ptr,
        "group_members": members,
        "train_index": data.train.index.astype(np.int64),
        "flip_mask": data.flip_mask.astype(bool),
    }
    meta = make_meta(
        "truth",
        mode="test",
        config=config_to_dict(cfg),
        dataset=data.name,
        n_models=m_models,
        model_seeds=seeds,
        outcome=cfg.validation.outcome,
        device=str(device),
    )
    return Truth(arrays=arrays, meta=meta, source="retraining")


def collect_signals(
    cfg: Config,
    truth: Truth,
    progress: train_collect.Progress | None = None,
    run: RunDir | None = None,
) -> list[Signals]:
    """Stage 1 in test mode for every seed of ``experiment.seeds``, with the truth's groups
    and test points, kept in memory."""
    index = truth["train_index"]
    ptr, members = truth["group_ptr"], truth["group_members"]
    groups = [index[members[a:b]].tolist() for a, b in itertools.pairwise(ptr)]
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        groups_file = Path(tmp) / "groups.json"
        groups_file.write_text(json.dumps(groups))
        for s in cfg.experiment.seeds:
            raw = config_to_dict(cfg)
            raw["seed"] = s
            raw["collect"] = {**raw["collect"], "mode": "test", "groups_file": str(groups_file)}
            seed_cfg = config_from_dict(raw)
            signals = cached_signals(
                run, f"signals-seed-{s}", partial(train_collect.run, seed_cfg, progress)
            )
            signals.source = f"seed {s}"
            out.append(signals)
    return out


@dataclass
class TestMethodValidation:
    """One method against the test-mode truths; lists run over the signals (seeds)."""

    label: str
    lds: list[float]  # mean over test points of the per-point LDS
    spearman_mu: list[float]  # mean over test points of Spearman with mu_true(q, .)
    relative: list[float]  # spearman_mu / sqrt(the truth's reliability at all M)
    # trainings + collection charged to the method, in units of one model's training
    cost: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float]:
        keys = ("lds", "spearman_mu", "relative", "cost")
        return {k: _mean(getattr(self, k)) for k in keys}


@dataclass
class TestValidateReport:
    n_train: int
    n_groups: int
    n_test: int
    n_models: int
    outcome: str
    seeds: list[Any]
    truth: dict[str, float]  # reliability of mu_true, and the LDS of mu_true itself
    methods: list[TestMethodValidation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for d, m in zip(out["methods"], self.methods, strict=True):
            d["mean"] = m.summary()
        return _json_safe(out)


def check_truth(truth: Truth) -> None:
    """Arrays of a test-mode truth."""
    missing = [k for k in TEST_TRUTH_ARRAYS if k not in truth]
    if truth.meta.get("mode") != "test" or missing:
        raise InputFileError(
            f"{truth.name} is not a test-mode ground truth; make one with fine validate on a "
            "config with collect.mode=test and --save-truth."
        )


def check_same_setting(truth: Truth, signals: Signals) -> None:
    same = (
        signals.mode == "test"
        and np.array_equal(signals["train_index"], truth["train_index"])
        and np.array_equal(signals["test_index"], truth["test_index"])
        and "group_ptr" in signals
        and np.array_equal(signals["group_ptr"], truth["group_ptr"])
        and np.array_equal(signals["group_members"], truth["group_members"])
    )
    if not same:
        raise InputFileError(
            f"signals {signals.name} do not have the ground truth's training points, test "
            "points and groups; let fine validate collect them, or collect with the truth's "
            "groups file and test points."
        )


def method_scores(
    signals: Signals, methods: list[str], options: EstimateOptions
) -> dict[str, np.ndarray]:
    """(m, G) scores of every f-INE estimator and every other method in ``methods``."""
    out: dict[str, np.ndarray] = {}
    base = {"checkpoints": options.checkpoints, "bootstrap": 0, "permutations": 0}
    for name in available_estimators(signal_view(signals)):
        opts = EstimateOptions(estimator=name, seed=options.seed, **base)  # type: ignore[arg-type]
        out[f"fine/{name}"] = estimate.run(signals, "fine", opts).scores
    for m in methods:
        if m != "fine":
            out[m] = estimate.run(signals, m, EstimateOptions(**base)).scores  # type: ignore[arg-type]
    return out


def run(
    cfg: Config, truth: Truth, signals: list[Signals], options: EstimateOptions
) -> TestValidateReport:
    """Score every method on each signals file against both test-mode truths."""
    check_truth(truth)
    if not signals:
        raise ConfigError("no signals to validate; pass --signals files or let validate collect.")
    for s in signals:
        check_same_setting(truth, s)
    design, outcome, mu = truth["design"], truth["outcome"], truth["mu_true"]
    reliability = datamodels.split_half_reliability(outcome, design)
    ceiling = reliability["full_m"]
    rows: dict[str, TestMethodValidation] = {}
    for s in signals:
        for label, scores in method_scores(s, list(cfg.experiment.methods), options).items():
            row = rows.setdefault(label, TestMethodValidation(label, [], [], []))
            row.lds.append(float(np.nanmean(datamodels.lds(scores, design, outcome))))
            rho = float(np.nanmean(datamodels.truth_spearman(scores, mu)))
            row.spearman_mu.append(rho)
            # Spearman's correction for attenuation: a truth of reliability r correlates at
            # most sqrt(r) with anything
            row.relative.append(rho / np.sqrt(ceiling) if ceiling > 0 else float("nan"))
            row.cost.append(training_runs(label.split("/")[0], s))
    return TestValidateReport(
        n_train=int(truth["train_index"].shape[0]),
        n_groups=int(design.shape[1]),
        n_test=int(outcome.shape[1]),
        n_models=int(design.shape[0]),
        outcome=str(truth.meta.get("outcome")),
        seeds=[(s.meta.get("config") or {}).get("seed") for s in signals],
        truth={**reliability, "lds_of_half_truth": _half_truth_lds(design, outcome)},
        methods=list(rows.values()),
    )


def training_runs(method: str, signals: Signals) -> float:
    """What ``method`` costs on ``signals`` (its trainings and collection, as ``fine run``'s
    report charges them; scoring excluded), in units of one model's training."""
    from fine_cli.report import charged
    from fine_cli.stages.experiment import SeedRun

    t = signals.meta.get("timing") or {}
    feats = (signals.meta.get("features") or {}).get("timing", {})
    run = SeedRun(
        seed=0,
        directory="",
        reused=False,
        train_s=float(t.get("train_s", float("nan"))),
        collect_s=float(t.get("collect_s", float("nan"))),
        train_extra_s=float(t.get("train_extra_s", 0.0)),
        features={k: float(v) for k, v in feats.items()},
        estimate_s={},
    )
    train, collect = charged(method, run)
    return (train + collect) / (run.train_s / 2)


def _half_truth_lds(design: np.ndarray, outcome: np.ndarray) -> float:
    """LDS, on the second half of the models, of mu_true measured on the first half: what
    a perfect group-level attribution from M/2 retrainings reaches (out of sample)."""
    half = design.shape[0] // 2
    mu_a = datamodels.group_truth(outcome[:half], design[:half])
    return float(np.nanmean(datamodels.lds(mu_a, design[half:], outcome[half:])))


def _mean(values: list[float]) -> float:
    a = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(a)) if a.size and np.isfinite(a).any() else float("nan")


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v
