"""``fine run`` on an ``llm:`` config: the paper's poisoning experiment (Sections 4.3-4.5).

For each seed of ``experiment.seeds``, in ``<out>/seed-<seed>/``:

1. LoRA adapters on the shared base model for a main and an auxiliary model (independent
   adapter inits and shuffling), fine-tuned side by side on the clean plus poisoned
   instructions; at ``collect.checkpoints`` evenly spaced steps the
   :class:`~fine_cli.llm.collect.LoraCollector` records the signals: ``signals.npz``
   (exact inner products) and ``signals-d<d>.npz`` (count sketches of dimension d);
2. a third model on the clean instructions alone, and the steering check: each entity's
   target-answer rate without and with the poison;
3. every method of ``experiment.methods`` on every entity's query set (``influence-*.npz``),
   and recall of that entity's poisoned instructions in the top-p%;
4. the ablations: each sketch dimension d (Fig. 9) and random subsets of the checkpoints
   drawn at estimate time (Fig. 10).

Then the coefficient of variation of the scores across seeds (Fig. 8), and for one
instruction the distributions of O and O' (Fig. 11). Times are wall-clock seconds of each
stage inside the process.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fine_cli import metrics
from fine_cli.artifacts import save
from fine_cli.batches import TensorPairs
from fine_cli.config import ESTIMATORS, Config, config_from_dict, config_to_dict
from fine_cli.errors import ConfigError
from fine_cli.estimators.options import EstimateOptions
from fine_cli.llm.base import Prepared, prepare
from fine_cli.llm.collect import CHECKPOINT_AXIS, LoraCollector
from fine_cli.llm.model import add_lora
from fine_cli.llm.steering import Steering, steering, target_choices
from fine_cli.llm.train import Run, Schedule, checkpoint_steps, train
from fine_cli.results import Signals
from fine_cli.stages import estimate, rank
from fine_cli.stages.distribution import Distribution, distribution
from fine_cli.training import resolve_device

Message = Callable[[str], None]


@dataclass
class SeedResult:
    """One seed: steering, scores and recall of every method, ablations, times."""

    seed: int
    directory: str
    steering: Steering
    # method -> (q, n) scores of the exact signals
    scores: dict[str, np.ndarray]
    # method -> (q, P) recall of each entity's poison in the top-p%
    recall: dict[str, np.ndarray]
    # d -> method -> (q, P); the exact signals under the key "exact"
    by_dim: dict[str, dict[str, np.ndarray]]
    # k checkpoints -> method -> (q, P); all of them under the key of their number
    by_checkpoints: dict[int, dict[str, np.ndarray]]
    timing: dict[str, float]
    # f-INE by each estimator (config.ESTIMATORS): (q, n) scores and (q, P) recall
    estimator_scores: dict[str, np.ndarray] = field(default_factory=dict)
    estimator_recall: dict[str, np.ndarray] = field(default_factory=dict)
    signals: Signals | None = None  # exact signals (kept for the distribution figure)


@dataclass
class LLMExperimentResult:
    """Everything the report needs."""

    name: str
    config: dict[str, Any]
    methods: list[str]
    entities: list[str]
    p_grid: list[float]
    runs: list[SeedResult]
    # method -> (q, P') mean CV across seeds of the top-p% (consensus ranking), p > 0
    cv: dict[str, np.ndarray]
    cv_estimators: dict[str, np.ndarray]  # the same for f-INE by each estimator
    data: dict[str, Any]
    timing: dict[str, float]
    distribution: Distribution | None = None
    distribution_scores: dict[str, Any] = field(default_factory=dict)

    @property
    def seeds(self) -> list[int]:
        return [r.seed for r in self.runs]


def run(cfg: Config, out_dir: str | Path, message: Message | None = None) -> LLMExperimentResult:
    """Every seed, method and ablation of ``cfg`` (module docstring)."""
    llm = cfg.llm
    if llm is None:
        raise ConfigError("this config has no llm: section; fine run reads it for LLM runs.")
    unused = sorted({"data", "model", "train", "collect"} & cfg.model_fields_set)
    if unused:
        raise ConfigError(
            f"an llm: config does not read the top-level section(s) {', '.join(unused)}; "
            "remove them and set the same things under llm: (docs/LLM.md)."
        )
    say = message or (lambda _: None)
    seeds = list(cfg.experiment.seeds)
    methods = list(dict.fromkeys(cfg.experiment.methods))
    if len(seeds) < 2 or len(set(seeds)) != len(seeds):
        raise ConfigError(
            f"experiment.seeds is {seeds}; give at least two different seeds, e.g. [0, 1, 2]."
        )
    grid = list(llm.evaluate.p_grid)
    wanted = [*llm.evaluate.table_p, llm.evaluate.ablation_p, 100.0]
    if any(p not in grid for p in wanted):
        raise ConfigError(
            f"llm.evaluate: table_p {llm.evaluate.table_p}, ablation_p {llm.evaluate.ablation_p} "
            f"and 100 must be in p_grid {grid}; add them to p_grid."
        )
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(llm.train.device)
    t_all, cpu_all = time.perf_counter(), time.process_time()
    prep = prepare(llm, out, device, say)
    say(
        f"data: {len(prep.train)} instructions ({int(prep.poisoned.sum())} poisoned), "
        f"{len(prep.test)} test prompts of {len(prep.entities)} entities"
    )
    opts = EstimateOptions.from_config(cfg.estimate)
    runs = []
    for seed in seeds:
        seed_cfg = config_from_dict({**config_to_dict(cfg), "seed": seed})
        runs.append(run_seed(seed_cfg, prep, methods, opts, out / f"seed-{seed}", say))

    def cv_of(scores: list[np.ndarray]) -> np.ndarray:  # (q, P') from (q, n) per seed
        return np.array(
            [
                [_cv([s[e] for s in scores], p) for p in grid if p > 0]
                for e in range(len(prep.entities))
            ]
        )

    cv = {m: cv_of([r.scores[m] for r in runs]) for m in methods}
    cv_est = {k: cv_of([r.estimator_scores[k] for r in runs]) for k in runs[0].estimator_scores}
    dist, dist_scores = _distribution(llm.evaluate.distribution, runs[0], prep, methods)
    spent = [v for k, v in prep.timing.items() if k != "pretrain_s_cached"]  # not this run's
    timing = {"prepare": round(sum(spent), 2)}
    timing.update({k: round(v, 2) for k, v in prep.timing.items()})
    timing["total_s"] = round(time.perf_counter() - t_all, 2)
    timing["total_cpu_s"] = round(time.process_time() - cpu_all, 2)  # this process's CPU time
    for r in runs:
        r.signals = None  # the arrays are on disk; the result stays small
    return LLMExperimentResult(
        name=cfg.name,
        config=config_to_dict(cfg),
        methods=methods,
        entities=prep.entities,
        p_grid=grid,
        runs=runs,
        cv=cv,
        cv_estimators=cv_est,
        data={
            "n_train": len(prep.train),
            "n_poisoned": {
                e: int((prep.poisoned & (prep.labels == i)).sum())
                for i, e in enumerate(prep.entities)
            },
            "n_test": {e: len(g) for e, g in zip(prep.entities, prep.query_groups)},
            "base": prep.base_info,
        },
        timing=timing,
        distribution=dist,
        distribution_scores=dist_scores,
    )


def run_seed(
    cfg: Config,
    prep: Prepared,
    methods: list[str],
    opts: EstimateOptions,
    directory: Path,
    say: Message,
) -> SeedResult:
    """Train, collect, check steering, estimate and evaluate one seed."""
    llm = cfg.llm
    assert llm is not None
    directory.mkdir(parents=True, exist_ok=True)
    timing: dict[str, float] = {}
    s_main, s_aux, s_shuffle_main, s_shuffle_aux, s_probe, s_clean = (
        int(s.generate_state(1)[0]) for s in np.random.SeedSequence(cfg.seed).spawn(6)
    )
    lo, tr, co = llm.lora, llm.train, llm.collect
    poisoned = prep.poisoned

    def lora(seed: int) -> torch.nn.Module:
        return add_lora(prep.base, lo.r, lo.alpha, lo.dropout, lo.target_modules, seed)

    def make_run(model: torch.nn.Module, rows: np.ndarray, seed: int) -> Run:
        return Run(
            model, prep.x_train[rows], prep.y_train[rows], tr.batch_size, seed, tr.lr,
            tr.betas, tr.weight_decay,
        )  # fmt: skip

    everything = np.arange(len(prep.train))
    main, aux = lora(s_main), lora(s_aux)
    runs = [make_run(main, everything, s_shuffle_main), make_run(aux, everything, s_shuffle_aux)]
    total = tr.epochs * runs[0].steps_per_epoch()
    marks = checkpoint_steps(total, co.checkpoints)
    collector = LoraCollector(
        main,
        aux,
        TensorPairs(prep.x_train, prep.y_train),
        (prep.x_test, prep.y_test),
        prep.query_groups,
        probe_batch_size=co.probe_batch_size or tr.batch_size,
        probe_repeats=co.probe_repeats,
        seed=s_probe,
        chunk_size=co.chunk_size,
        precondition=co.precondition,
        sketch_dims=co.sketch_dims,
        sketch_seed=co.sketch_seed,
        labels=prep.labels,
        flip_mask=poisoned,
    )
    say(f"seed {cfg.seed}: LoRA main + auxiliary, {total} steps, {len(marks)} checkpoints")
    t0 = time.perf_counter()
    schedule = Schedule(tr.lr, total, tr.schedule, tr.warmup)
    main_opt = runs[0].optimizer

    def at_checkpoint(step: int, lr: float) -> None:
        collector.checkpoint(lr, main_opt, step)

    train(runs, tr.epochs, schedule, at_checkpoint, marks)
    timing["collect_s"] = collector.collect_s
    timing["train_s"] = time.perf_counter() - t0 - collector.collect_s
    say(
        f"seed {cfg.seed}: trained in {timing['train_s']:.1f} s, signals collected in "
        f"{timing['collect_s']:.1f} s"
    )
    meta = {
        "config": config_to_dict(cfg),
        "dataset": "llm-" + llm.data.source,
        "queries": prep.entities,
        "timing": {
            "train_s": round(timing["train_s"], 3),
            "collect_s": round(collector.collect_s, 3),
        },
    }
    t0 = time.perf_counter()
    exact = collector.signals(0, **meta)
    save(exact, str(directory / "signals.npz"))
    sketched = {}
    for d in co.sketch_dims:
        sketched[d] = collector.signals(d, **meta)
        save(sketched[d], str(directory / f"signals-d{d}.npz"))
    timing["save_s"] = time.perf_counter() - t0
    collector.release()  # the auxiliary model is not needed any more
    runs.clear()
    del aux

    t0 = time.perf_counter()
    clean_rows = np.flatnonzero(~poisoned)
    clean = lora(s_main)  # the main model's adapter init, without the poison
    clean_run = make_run(clean, clean_rows, s_clean)
    clean_total = tr.epochs * clean_run.steps_per_epoch()
    train([clean_run], tr.epochs, Schedule(tr.lr, clean_total, tr.schedule, tr.warmup))
    timing["clean_train_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    answers = (prep.x_test, prep.y_test), (prep.x_alt, prep.y_alt)
    steer = steering(
        prep.entities,
        prep.prompt_groups,
        target_choices(clean, *answers),
        target_choices(main, *answers),
        llm.evaluate.min_increase,
    )
    timing["steering_s"] = time.perf_counter() - t0
    rates = ", ".join(
        f"{e} {c:.0%} -> {p:.0%}" for e, c, p in zip(steer.entities, steer.clean, steer.poisoned)
    )
    say(f"seed {cfg.seed}: target-answer rate clean -> poisoned: {rates}")
    del clean_run, clean, main

    grid = list(llm.evaluate.p_grid)
    scores, recall = {}, {}
    for m in methods:
        t0 = time.perf_counter()
        influence = estimate.run(exact, m, opts)
        timing[f"estimate_{m}_s"] = time.perf_counter() - t0
        save(influence, str(directory / f"influence-{m}.npz"))
        scores[m] = influence.scores
        recall[m] = _recall(influence, prep, grid)
    t0 = time.perf_counter()
    est_scores, est_recall = {}, {}
    if "fine" in methods:
        for name in ESTIMATORS:
            influence = estimate.run(exact, "fine", dataclasses.replace(opts, estimator=name))
            est_scores[name], est_recall[name] = influence.scores, _recall(influence, prep, grid)
    timing["estimators_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    by_dim: dict[str, dict[str, np.ndarray]] = {"exact": recall}
    for d, sig in sketched.items():
        by_dim[str(d)] = {m: _recall(estimate.run(sig, m, opts), prep, grid) for m in methods}
    timing["ablation_dims_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    c = exact.n_checkpoints
    by_ckpt: dict[int, dict[str, np.ndarray]] = {}
    draw = np.random.default_rng([llm.evaluate.subsample_seed, cfg.seed])
    for k in sorted(llm.evaluate.checkpoint_subsets):
        if not 1 <= k < c:
            raise ConfigError(
                f"llm.evaluate.checkpoint_subsets holds {k}; give counts below the "
                f"{c} checkpoints collected."
            )
        sub = select_checkpoints(exact, np.sort(draw.choice(c, k, replace=False)))
        by_ckpt[k] = {m: _recall(estimate.run(sub, m, opts), prep, grid) for m in methods}
    by_ckpt[c] = recall
    timing["ablation_checkpoints_s"] = time.perf_counter() - t0
    ap = llm.evaluate.ablation_p
    say(
        f"seed {cfg.seed}: "
        + ", ".join(
            f"{m} recall@{ap:g}% " + "/".join(f"{v:.2f}" for v in _at(recall[m], grid, ap))
            for m in methods
        )
    )
    return SeedResult(
        seed=cfg.seed,
        directory=str(directory),
        steering=steer,
        scores=scores,
        recall=recall,
        by_dim=by_dim,
        by_checkpoints=by_ckpt,
        timing={k: round(v, 3) for k, v in timing.items()},
        estimator_scores=est_scores,
        estimator_recall=est_recall,
        signals=exact,
    )


def _recall(influence: Any, prep: Prepared, grid: list[float]) -> np.ndarray:
    """(q, P): recall of each entity's poisoned instructions in its ranking's top-p%."""
    labels, poisoned = prep.labels, prep.poisoned
    rows = []
    for e in range(len(prep.entities)):
        order = rank.run(influence, query=e)["order"]
        positive = poisoned & (labels == e)
        rows.append(metrics.recall_at(positive[order], grid))
    return np.array(rows)


def _at(curves: np.ndarray, grid: list[float], p: float) -> np.ndarray:
    """(q,) the column of ``curves`` (q, P) at percentage ``p`` of ``grid``."""
    return curves[:, grid.index(p)] if p in grid else np.full(curves.shape[0], np.nan)


def _cv(scores: list[np.ndarray], p: float) -> float:
    """Mean coefficient of variation across seeds over the top-p% by mean score (Fig. 8)."""
    s = np.stack(scores)  # (seeds, n)
    consensus = np.argsort(-s.mean(axis=0), kind="stable")
    return metrics.coefficient_of_variation(s, consensus[: metrics.top_k(p, consensus.size)])


def select_checkpoints(signals: Signals, idx: np.ndarray) -> Signals:
    """The same signals at checkpoints ``idx`` only (every array with a checkpoint axis)."""
    arrays = dict(signals.arrays)
    for key, axis in CHECKPOINT_AXIS.items():
        if key in arrays:
            arrays[key] = np.take(arrays[key], idx, axis=axis)
    meta = {**signals.meta, "checkpoints_subsampled": [int(i) for i in idx]}
    return Signals(arrays=arrays, meta=meta, source=signals.source)


def _distribution(
    chosen: int | None, first: SeedResult, prep: Prepared, methods: list[str]
) -> tuple[Distribution | None, dict[str, Any]]:
    """Fig. 11: O and O' of one poisoned instruction for its entity's query set, in the
    first seed: ``chosen``, or the one whose rank f-INE puts highest above LESS's."""
    if first.signals is None:
        return None, {}
    labels, poisoned = prep.labels, prep.poisoned
    if chosen is None:
        if "fine" not in first.scores:
            return None, {}
        other = (
            "less" if "less" in first.scores else next((m for m in methods if m != "fine"), None)
        )
        best, chosen = -np.inf, None
        for e in range(len(prep.entities)):
            rank_f = _ranks(first.scores["fine"][e])
            rank_o = _ranks(first.scores[other][e]) if other else rank_f
            for i in np.flatnonzero(poisoned & (labels == e)):
                gap = rank_o[i] - rank_f[i]
                if gap > best:
                    best, chosen = gap, int(i)
        if chosen is None:
            return None, {}
    if not 0 <= chosen < len(prep.train):
        raise ConfigError(
            f"llm.evaluate.distribution is {chosen}; give an instruction in "
            f"0..{len(prep.train) - 1}."
        )
    query = int(labels[chosen]) if labels[chosen] >= 0 else 0
    dist = distribution(first.signals, chosen, query)
    n = len(prep.train)
    info = {
        "instruction": chosen,
        "query": prep.entities[query],
        "prompt": prep.train[chosen].prompt,
        "response": prep.train[chosen].response,
        "poisoned": bool(poisoned[chosen]),
        "seed": first.seed,
        "scores": {m: float(first.scores[m][query, chosen]) for m in methods},
        "rank_percent": {
            m: float(100.0 * (_ranks(first.scores[m][query])[chosen] + 1) / n) for m in methods
        },
    }
    return dist, info


def _ranks(scores: np.ndarray) -> np.ndarray:
    """(n,) 0-based rank of each entry, 0 = the largest score."""
    order = np.argsort(-scores, kind="stable")
    out = np.empty_like(order)
    out[order] = np.arange(order.size)
    return out
