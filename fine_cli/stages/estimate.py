"""Stage 2: signals -> influence scores of every (query, subset) pair, by one method."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from fine_cli.artifacts import Artifact, check_shape, make_meta, require_finite
from fine_cli.config import ALTERNATIVES, EstimateConfig
from fine_cli.errors import ConfigError, InputFileError, RunError
from fine_cli.estimators import METHODS, Signals, null, projected
from fine_cli.estimators.fine import ESTIMATOR_FNS, clip_bounds
from fine_cli.estimators.samples import first_checkpoints, query_samples, self_samples

SIGNALS_REQUIRED = (
    "train_index",
    "labels",
    "flip_mask",
    "lr",
    "probe_idx",
    "sqnorm",
    "ip",
    "probe_sqnorm",
    "loss",
    "margin",
)
TEST_REQUIRED = ("test_index", "test_ip", "test_sqnorm", "gram")
# Queries per pass in test mode: bounds the (q, G, C*R) sample arrays.
QUERY_CHUNK = 8
# Option defaults come from the config schema: one source for CLI, config and stage.
_DEFAULTS = EstimateConfig()


def signals_view(art: Artifact) -> Signals:
    """Validate a signals artifact's shapes and build the numeric view the estimators use."""
    mode = art.meta.get("mode")
    if mode not in ("self", "test"):
        raise InputFileError(
            f"signals file has unknown mode {mode!r}; re-create it with train-collect."
        )
    if mode == "test":
        missing = [k for k in TEST_REQUIRED if k not in art]
        if missing:
            raise InputFileError(
                f"test-mode signals lack {', '.join(missing)}; re-create them with train-collect.",
            )
    n = art["train_index"].shape[0]
    c = art["lr"].shape[0]
    r, b = art["probe_idx"].shape[1], art["probe_idx"].shape[3]
    check_shape(art, "probe_idx", (c, r, 2, b))
    for k in ("sqnorm", "loss", "margin"):
        check_shape(art, k, (2, c, n))
    check_shape(art, "ip", (2, c, r, 2, n))
    check_shape(art, "probe_sqnorm", (2, c, r, 2))
    for k in ("labels", "flip_mask"):
        check_shape(art, k, (n,))
    if art["probe_idx"].min(initial=0) < 0 or art["probe_idx"].max(initial=0) >= n:
        raise InputFileError(
            "signals 'probe_idx' points outside the training set; the file is damaged."
        )
    require_finite(art, ("lr", "sqnorm", "ip", "probe_sqnorm", "loss", "margin"))
    sig = Signals(
        mode=mode,
        lr=art["lr"],
        probe_idx=art["probe_idx"],
        sqnorm=art["sqnorm"],
        ip=art["ip"],
        probe_sqnorm=art["probe_sqnorm"],
        loss=art["loss"],
        margin=art["margin"],
    )
    if mode == "test":
        m = art["test_index"].shape[0]
        check_shape(art, "gram", (2, c, m, n))
        check_shape(art, "test_ip", (2, c, r, 2, m))
        check_shape(art, "test_sqnorm", (2, c, m))
        require_finite(art, ("test_ip", "test_sqnorm", "gram"))
        sig.gram, sig.test_ip, sig.test_sqnorm = art["gram"], art["test_ip"], art["test_sqnorm"]
        if "group_ptr" in art:
            ptr, mem = art["group_ptr"], art["group_members"]
            if (
                ptr[0] != 0
                or ptr[-1] != mem.shape[0]
                or np.any(np.diff(ptr) <= 0)
                or (mem.size and (mem.min() < 0 or mem.max() >= n))
            ):
                raise InputFileError("signals groups (group_ptr/group_members) are inconsistent.")
            sig.group_ptr, sig.group_members = ptr, mem
    projected.attach(art, sig)  # trak / if features, when train-collect stored them
    return sig


@dataclass
class EstimateOptions:
    """How f-INE turns samples into scores, and the extras stored beside them."""

    estimator: str = _DEFAULTS.estimator  # a name of config.ESTIMATORS
    checkpoints: int | None = _DEFAULTS.checkpoints  # first K checkpoints only (every method)
    bootstrap: int = _DEFAULTS.bootstrap  # block-bootstrap draws for stderr; 0 = none
    permutations: int = _DEFAULTS.permutations  # swap patterns for p-values; 0 = none
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


def _check_options(opts: EstimateOptions, sig: Signals) -> None:
    if opts.estimator not in ESTIMATOR_FNS:
        raise ConfigError(
            f"unknown estimator '{opts.estimator}'; choose one of {', '.join(ESTIMATOR_FNS)}."
        )
    if opts.alternative not in ALTERNATIVES:
        raise ConfigError(
            f"unknown alternative '{opts.alternative}'; choose one of {', '.join(ALTERNATIVES)}."
        )
    if opts.checkpoints is not None and not 1 <= opts.checkpoints <= sig.n_checkpoints:
        raise ConfigError(
            f"checkpoints is {opts.checkpoints} but the signals hold {sig.n_checkpoints}; "
            f"use 1..{sig.n_checkpoints}, or leave it unset for all."
        )
    if opts.bootstrap == 1 or opts.bootstrap < 0 or opts.permutations < 0:
        raise ConfigError(
            f"bootstrap ({opts.bootstrap}) must be 0 (none) or at least 2, and permutations "
            f"({opts.permutations}) at least 0."
        )


def _sample_blocks(sig: Signals) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """X, Y (P, N) blocks in score order: all subsets (self mode), or QUERY_CHUNK queries
    at a time x all subsets (test mode, rows query-major)."""
    if sig.mode == "self":
        yield self_samples(sig)
        return
    for start in range(0, sig.n_queries, QUERY_CHUNK):
        x, y = query_samples(sig, slice(start, start + QUERY_CHUNK))
        q, g, n = x.shape
        yield x.reshape(q * g, n), y.reshape(q * g, n)


def fine_statistics(sig: Signals, opts: EstimateOptions) -> dict[str, np.ndarray]:
    """f-INE scores (q, G) by ``opts.estimator``, plus ``stderr`` and ``pvalue`` (q, G) when
    bootstrap / permutations are asked for."""
    fn = ESTIMATOR_FNS[opts.estimator]
    r, c = sig.n_repeats, sig.n_checkpoints
    boot_rng, perm_rng = (
        np.random.default_rng([stream, opts.seed & 0xFFFFFFFF]) for stream in (1, 2)
    )
    cols = null.bootstrap_columns(c, r, opts.bootstrap, boot_rng) if opts.bootstrap else None
    swaps = null.swap_masks(c * r, opts.permutations, perm_rng) if opts.permutations else None
    parts: dict[str, list[np.ndarray]] = {"scores": [], "stderr": [], "pvalue": []}
    for x, y in _sample_blocks(sig):
        obs = fn(x, y, r)
        parts["scores"].append(obs)
        if cols is not None:
            parts["stderr"].append(null.bootstrap_se(x, y, fn, r, cols))
        if swaps is not None:
            draws = null.permutation_null(x, y, fn, r, swaps)
            parts["pvalue"].append(null.permutation_pvalues(obs, draws, opts.alternative))
    q = 1 if sig.mode == "self" else sig.n_queries
    return {k: np.concatenate(v).reshape(q, -1) for k, v in parts.items() if v}


def run(
    signals: Artifact, method: str, options: EstimateOptions | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Score every (query, subset) pair; returns (arrays, meta) of an influence artifact.

    For f-INE the estimator, checkpoint truncation, bootstrap standard errors and
    permutation p-values follow ``options``; the baselines use ``options.checkpoints`` only.
    """
    opts = options or EstimateOptions()
    if method not in METHODS:
        raise ConfigError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}.")
    sig = signals_view(signals)
    _check_options(opts, sig)
    n_ckpt_all = sig.n_checkpoints
    if opts.checkpoints is not None:
        sig = first_checkpoints(sig, opts.checkpoints)
    stats: dict[str, np.ndarray] = {}
    if method == "fine":
        stats = fine_statistics(sig, opts)
        scores = stats.pop("scores")
    elif sig.mode == "self":
        scores = METHODS[method](sig, None)
    else:
        fn = METHODS[method]
        parts = [fn(sig, slice(s, s + QUERY_CHUNK)) for s in range(0, sig.n_queries, QUERY_CHUNK)]
        scores = np.concatenate(parts, axis=0)
    if not np.all(np.isfinite(scores)):
        raise RunError(f"method '{method}' produced non-finite scores; the signals are degenerate.")
    ptr, members = sig.groups()
    query_index = (
        np.array([-1], dtype=np.int64)
        if sig.mode == "self"
        else signals["test_index"].astype(np.int64)
    )
    arrays = {
        "scores": scores.astype(np.float64),
        "query_index": query_index,
        "train_index": signals["train_index"],
        "labels": signals["labels"],
        "flip_mask": signals["flip_mask"],
        "group_ptr": ptr.astype(np.int64),
        "group_members": members.astype(np.int64),
        **{k: v.astype(np.float64) for k, v in stats.items()},
    }
    extra: dict[str, Any] = {
        "checkpoints_used": sig.n_checkpoints,
        "checkpoints_total": n_ckpt_all,
    }
    if method == "fine":
        extra.update(_fine_meta(sig, opts))
    extra.update(projected.method_meta(method, sig))
    meta = make_meta(
        "influence",
        method=method,
        mode=sig.mode,
        n_samples=sig.n_samples,
        config=signals.meta.get("config"),
        signals_sha256=signals.sha256,
        seeds=signals.meta.get("seeds"),
        dataset=signals.meta.get("dataset"),
        **extra,
    )
    return arrays, meta


def _fine_meta(sig: Signals, opts: EstimateOptions) -> dict[str, Any]:
    """What made an f-INE score: estimator, clip (alg2), bootstrap and permutation settings."""
    out: dict[str, Any] = {"estimator": opts.estimator, "stat_seed": opts.seed}
    if opts.estimator == "alg2":
        (a_lo, a_hi), (b_lo, b_hi) = clip_bounds(sig.n_samples, sig.n_samples)
        out["clip"] = {"alpha": [a_lo, a_hi], "beta": [b_lo, b_hi]}
    if opts.bootstrap:
        out["bootstrap"] = {"draws": opts.bootstrap, "block": null.block_length(sig.n_checkpoints)}
    if opts.permutations:
        out["permutations"] = {"draws": opts.permutations, "alternative": opts.alternative}
    return out
