"""``fine validate``: a retraining ground truth, and how well every method tracks it.

Ground truth, membership-inference style (LiRA, Carlini et al. 2022): M models of the
config's architecture and training run on random halves of the training set, each point
in exactly M/2 of them. For point i, the models that did not see it (out) and those that
did (in) give two samples of its own final loss, the test statistic of Definition 2.1:

    mu_true[i]   = sqrt(2) * Phi^-1(AUC),  AUC = P(loss_out > loss_in)   (ties count 1/2)
    mean_diff[i] = mean(loss_out) - mean(loss_in)
    mu_lira[i]   = (mean(phi_in) - mean(phi_out)) / pooled sd(phi)

with phi = z_y - logsumexp_{k != y} z_k the logit-scaled confidence that LiRA models as
Gaussian. All three are positive when the point helps itself (its loss is lower when it
is trained on), the sign of ALGORITHM.md. The AUC is clipped to half its resolution,
[1/(2 n_in n_out), 1 - 1/(2 n_in n_out)], so a perfectly separated point is finite.

Every method's self-influence score (each f-INE estimator and the baselines) is then
compared with the truth: Spearman correlation per seed, detection AUROC of the flipped
labels, and the mean pairwise Jaccard of the top-p% sets across seeds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from scipy import stats

from fine_cli import metrics
from fine_cli.config import Config, config_to_dict
from fine_cli.data import LoadedData, load_data
from fine_cli.errors import ConfigError, InputFileError
from fine_cli.estimators.fine import auc_with
from fine_cli.estimators.fine_method import available_estimators
from fine_cli.estimators.view import signal_view
from fine_cli.results import Signals, Truth, check_shape, make_meta
from fine_cli.runstate import RunDir, cached_signals, cached_step
from fine_cli.stages import estimate, train_collect
from fine_cli.tasks import ClassificationTask
from fine_cli.training import resolve_device, train_model

# progress(models_done, models_total)
Progress = Callable[[int, int], None]
TRUTH_REQUIRED = Truth.REQUIRED
# The ground truth is self-influence of a classifier: its loss and LiRA's confidence.
TASK = ClassificationTask()
# Points per forward pass when scoring the trained models.
EVAL_CHUNK = 4096


# ---- ground truth ------------------------------------------------------------------------


def balanced_halves(n_models: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(M, n) bool: point i is in exactly M/2 models, chosen at random for each point."""
    keys = rng.random((n_models, n))
    ranks = np.argsort(np.argsort(keys, axis=0), axis=0)
    return ranks < n_models // 2


def model_seeds(seed: int, n_models: int) -> tuple[list[int], np.random.Generator]:
    """A seed per model (init and shuffling) and a generator for the halves."""
    seqs = np.random.SeedSequence(seed).spawn(n_models + 1)
    seeds = [int(s.generate_state(1)[0]) for s in seqs[:n_models]]
    return seeds, np.random.default_rng(seqs[-1])


def logit_confidence(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n,) phi = z_y - logsumexp_{k != y} z_k = log p_y - log(1 - p_y), computed stably."""
    return TASK.output_function(logits, y)


def _train_on(
    cfg: Config, data: LoadedData, keep: np.ndarray, seed: int, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Train one model on the training points where ``keep`` (n,) is True, as Stage 1 trains;
    returns its final loss and logit-scaled confidence on every training point, (n,) each."""
    x, y = data.train.x.to(device), data.train.y.to(device)
    model = train_model(cfg, data, x, y, keep, seed)
    losses, confs = [], []
    with torch.no_grad():
        for start in range(0, x.shape[0], EVAL_CHUNK):
            xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
            logits = model(xb).double()
            losses.append(TASK.measurement(logits, yb))
            confs.append(logit_confidence(logits, yb))
    return torch.cat(losses).cpu().numpy(), torch.cat(confs).cpu().numpy()


def truth_from_samples(
    loss: np.ndarray, confidence: np.ndarray, in_mask: np.ndarray
) -> dict[str, np.ndarray]:
    """mu_true, mean_diff, mu_lira, each (n,), from loss and confidence (M, n) of models whose
    training sets are given by in_mask (M, n); every point must be in and out at least twice."""
    n_in = in_mask.sum(axis=0)
    n_out = in_mask.shape[0] - n_in
    if n_in.min() < 2 or n_out.min() < 2:
        raise ValueError("every point must be in at least 2 models and out of at least 2")
    if np.any(n_in != n_in[0]):
        raise ValueError("truth_from_samples needs a balanced design (same n_in for all points)")
    # Balanced design: gather the in and out samples of each point as (n, n_in) matrices.
    order = np.argsort(~in_mask, axis=0, kind="stable")  # in-models first, per point
    k = int(n_in[0])
    cols = np.arange(loss.shape[1])

    def split(a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        s = a[order, cols]  # (M, n): the in samples then the out samples of each point
        return s[:k].T.astype(np.float64), s[k:].T.astype(np.float64)

    l_in, l_out = split(loss)
    c_in, c_out = split(confidence)
    pairs = l_in.shape[1] * l_out.shape[1]
    auc = np.clip(auc_with(l_out, l_in), 0.5 / pairs, 1.0 - 0.5 / pairs)
    pooled = np.sqrt((c_in.var(axis=1, ddof=1) + c_out.var(axis=1, ddof=1)) / 2.0)
    return {
        "mu_true": np.sqrt(2.0) * stats.norm.ppf(auc),
        "mean_diff": l_out.mean(axis=1) - l_in.mean(axis=1),
        "mu_lira": (c_in.mean(axis=1) - c_out.mean(axis=1)) / np.maximum(pooled, 1e-12),
    }


def run_truth(
    cfg: Config,
    progress: Progress | None = None,
    data: LoadedData | None = None,
    run: RunDir | None = None,
) -> Truth:
    """Train ``cfg.validation.models`` models on balanced random halves; returns the truth
    (docs/ARTIFACTS.md). ``data`` replaces ``load_data(cfg.data)``."""
    m = cfg.validation.models
    if m % 2:
        raise ConfigError(
            f"validation.models must be even (each point in half the models), got {m}."
        )
    device = resolve_device(cfg.train.device)
    data = data if data is not None else load_data(cfg.data)
    n = len(data.train)
    seeds, rng = model_seeds(cfg.validation.seed, m)
    in_mask = balanced_halves(m, n, rng)
    loss = np.zeros((m, n), np.float32)
    conf = np.zeros((m, n), np.float32)
    for i, s in enumerate(seeds):
        if progress:
            progress(i, m)
        # with a run directory, a model trained before an interruption is not trained again
        loss[i], conf[i] = cached_step(
            run,
            f"model-{i:05d}",
            ("loss", "confidence"),
            partial(_train_on, cfg, data, in_mask[i], s, device),
        )
    if progress:
        progress(m, m)
    arrays = {
        "in_mask": in_mask,
        "loss": loss,
        "confidence": conf,
        **truth_from_samples(loss, conf, in_mask),
        "train_index": data.train.index.astype(np.int64),
        "labels": data.train.y.numpy().astype(np.int64),
        "flip_mask": data.flip_mask.astype(bool),
    }
    meta = make_meta(
        "truth",
        config=config_to_dict(cfg),
        dataset=data.name,
        n_models=m,
        model_seeds=seeds,
        device=str(device),
    )
    return Truth(arrays=arrays, meta=meta, source="retraining")


# Random splits of the models into two disjoint halves, averaged in split_half_reliability.
RELIABILITY_SPLITS = 10


def unbalanced_mu_true(loss: np.ndarray, in_mask: np.ndarray) -> np.ndarray:
    """(n,) mu_true of models whose training sets (M, n) need not be balanced: the AUC of
    P(loss_out > loss_in) from average ranks within each point's M losses, clipped to
    half its resolution; nan where a point is never in or never out."""
    ranks = stats.rankdata(loss.astype(np.float64), axis=0)  # (M, n), ties averaged
    n_in = in_mask.sum(axis=0).astype(np.float64)
    n_out = in_mask.shape[0] - n_in
    u_out = np.where(in_mask, 0.0, ranks).sum(axis=0) - n_out * (n_out + 1) / 2
    pairs = n_in * n_out
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = np.clip(u_out / pairs, 0.5 / pairs, 1.0 - 0.5 / pairs)
        return np.where(pairs > 0, np.sqrt(2.0) * stats.norm.ppf(auc), np.nan)


def split_half_reliability(
    truth: Truth, splits: int = RELIABILITY_SPLITS, seed: int = 0
) -> dict[str, float]:
    """What the truth itself resolves: the Spearman correlation of mu_true computed on two
    disjoint random halves of its models (mean over ``splits`` random splits),
    ``full_m`` = its Spearman-Brown correction to all M models (2r / (1 + r)), and
    ``ceiling`` = sqrt(full_m), the most that any score can correlate with mu_true
    (Spearman's correction for attenuation)."""
    loss, in_mask = truth["loss"], truth["in_mask"].astype(bool)
    m = in_mask.shape[0]
    rng = np.random.default_rng(seed)
    rs = []
    for _ in range(splits):
        perm = rng.permutation(m)
        a, b = perm[: m // 2], perm[m // 2 :]
        mu_a = unbalanced_mu_true(loss[a], in_mask[a])
        mu_b = unbalanced_mu_true(loss[b], in_mask[b])
        ok = np.isfinite(mu_a) & np.isfinite(mu_b)
        with np.errstate(invalid="ignore", divide="ignore"):  # a constant half: nan
            rs.append(spearman(mu_a[ok], mu_b[ok]))
    r = float(np.nanmean(rs)) if np.isfinite(rs).any() else float("nan")
    full = 2.0 * r / (1.0 + r) if r > -1.0 else float("nan")
    return {
        "split_half": r,
        "full_m": full,
        "ceiling": float(np.sqrt(full)) if full > 0 else float("nan"),
    }


def check_truth(art: Truth) -> None:
    """Shapes of a loaded truth artifact."""
    m, n = art["in_mask"].shape
    for k in ("loss", "confidence"):
        check_shape(art, k, (m, n))
    for k in ("mu_true", "mean_diff", "mu_lira", "flip_mask"):
        check_shape(art, k, (n,))


# ---- comparison --------------------------------------------------------------------------


@dataclass
class MethodValidation:
    """How one method's scores track the truth; lists run over the signals (seeds)."""

    label: str  # "fine/<estimator>" or a baseline's name
    spearman_mu: list[float]  # Spearman with mu_true
    spearman_lira: list[float]  # Spearman with mu_lira
    spearman_mean_diff: list[float]  # Spearman with mean_diff
    auroc: list[float]  # detection of the flipped labels
    jaccard: float | None  # mean pairwise Jaccard of the top-p% across seeds (None: 1 seed)

    def summary(self) -> dict[str, float | None]:
        return {
            "spearman_mu": _mean(self.spearman_mu),
            "spearman_lira": _mean(self.spearman_lira),
            "spearman_mean_diff": _mean(self.spearman_mean_diff),
            "auroc": _mean(self.auroc),
            "jaccard": self.jaccard,
        }


@dataclass
class ValidateReport:
    n_train: int
    n_flipped: int
    n_models: int
    seeds: list[Any]  # the training seed of each signals file
    jaccard_p: float
    checkpoints: int | str | None  # estimate.checkpoints used ("auto", K, None = all)
    truth: dict[str, float]  # how the truth itself looks (see truth_summary)
    methods: list[MethodValidation] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for d, m in zip(out["methods"], self.methods, strict=True):
            d["mean"] = m.summary()
        return _json_safe(out)


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two (n,) arrays (average ranks for ties)."""
    return float(np.corrcoef(metrics.average_ranks(a), metrics.average_ranks(b))[0, 1])


def truth_summary(truth: Truth) -> dict[str, float]:
    mu, flip = truth["mu_true"], truth["flip_mask"].astype(bool)
    m = truth["in_mask"].shape[0]
    cap = float(np.sqrt(2.0) * stats.norm.ppf(1.0 - 0.5 / (m // 2) ** 2))
    return {
        "auroc_mu_true": metrics.auroc(mu, flip),
        "auroc_mu_lira": metrics.auroc(truth["mu_lira"], flip),
        "mean_mu_true_flipped": float(mu[flip].mean()) if flip.any() else float("nan"),
        "mean_mu_true_clean": float(mu[~flip].mean()) if (~flip).any() else float("nan"),
        "share_at_cap": float(np.mean(mu >= cap - 1e-9)),
        "mu_true_cap": cap,
        "spearman_mu_true_lira": spearman(mu, truth["mu_lira"]),
        **split_half_reliability(truth),
    }


def method_scores(
    signals: Signals, methods: list[str], options: estimate.EstimateOptions
) -> dict[str, np.ndarray]:
    """(n,) self-influence of every f-INE estimator and every baseline in ``methods``."""
    out: dict[str, np.ndarray] = {}
    # the estimators these signals can feed (alg2, auc, std need the auxiliary model)
    for name in available_estimators(signal_view(signals)):
        opts = estimate.EstimateOptions(
            estimator=name,
            checkpoints=options.checkpoints,
            bootstrap=0,
            permutations=0,
            seed=options.seed,
        )
        out[f"fine/{name}"] = estimate.run(signals, "fine", opts).scores[0]
    for m in methods:
        if m == "fine":
            continue
        opts = estimate.EstimateOptions(
            checkpoints=options.checkpoints, bootstrap=0, permutations=0
        )
        out[m] = estimate.run(signals, m, opts).scores[0]
    return out


def compare(
    truth: Truth, runs: list[dict[str, np.ndarray]], jaccard_p: float
) -> list[MethodValidation]:
    """Per method: Spearman with the truth and AUROC per run, Jaccard across runs."""
    flip = truth["flip_mask"].astype(bool)
    rows = []
    for label in runs[0]:
        per_run = [r[label] for r in runs]
        rankings = [np.argsort(-s, kind="stable") for s in per_run]
        rows.append(
            MethodValidation(
                label=label,
                spearman_mu=[spearman(s, truth["mu_true"]) for s in per_run],
                spearman_lira=[spearman(s, truth["mu_lira"]) for s in per_run],
                spearman_mean_diff=[spearman(s, truth["mean_diff"]) for s in per_run],
                auroc=[metrics.auroc(s, flip) for s in per_run],
                jaccard=metrics.jaccard_consistency(rankings, jaccard_p) if len(runs) > 1 else None,
            )
        )
    return rows


def check_same_data(truth: Truth, signals: Signals, label: str) -> None:
    same = (
        signals["train_index"].shape == truth["train_index"].shape
        and np.array_equal(signals["train_index"], truth["train_index"])
        and np.array_equal(signals["flip_mask"], truth["flip_mask"])
    )
    if not same:
        raise InputFileError(
            f"signals '{label}' were collected on other training data (points or flipped labels "
            "differ) than the ground truth; use the same data settings for both.",
        )
    if signals.meta.get("mode") != "self":
        raise InputFileError(
            f"signals '{label}' are in {signals.meta.get('mode')} mode; validate compares "
            "self-influence, so collect them with collect.mode=self.",
        )


def collect_signals(
    cfg: Config, progress: train_collect.Progress | None = None, run: RunDir | None = None
) -> list[Signals]:
    """Stage 1 for every seed in ``cfg.experiment.seeds``, kept in memory (and in the run
    directory, when given, so that an interrupted validate does not collect it again)."""
    out = []
    for s in cfg.experiment.seeds:
        run_cfg = cfg.model_copy(update={"seed": s})
        signals = cached_signals(
            run, f"signals-seed-{s}", partial(train_collect.run, run_cfg, progress)
        )
        signals.source = f"seed {s}"
        out.append(signals)
    return out


def run(
    cfg: Config, truth: Truth, signals: list[Signals], options: estimate.EstimateOptions
) -> ValidateReport:
    """Score every method on each signals file and compare with the truth."""
    check_truth(truth)
    if not signals:
        raise ConfigError("no signals to validate; pass --signals files or let validate collect.")
    for i, s in enumerate(signals):
        check_same_data(truth, s, s.source or f"#{i}")
    runs = [method_scores(s, list(cfg.experiment.methods), options) for s in signals]
    common = [k for k in runs[0] if all(k in r for r in runs)]
    runs = [{k: r[k] for k in common} for r in runs]
    flip = truth["flip_mask"].astype(bool)
    return ValidateReport(
        n_train=int(flip.size),
        n_flipped=int(flip.sum()),
        n_models=int(truth["in_mask"].shape[0]),
        seeds=[(s.meta.get("config") or {}).get("seed") for s in signals],
        jaccard_p=cfg.validation.jaccard_p,
        checkpoints=options.checkpoints,
        truth=truth_summary(truth),
        methods=compare(truth, runs, cfg.validation.jaccard_p),
    )
