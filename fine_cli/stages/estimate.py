"""Stage 2: signals -> influence scores of every (query, subset) pair, by one method."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fine_cli import registry
from fine_cli.allocator import keep_freed_memory
from fine_cli.errors import RunError
from fine_cli.estimators import null
from fine_cli.estimators.fine import MOMENT_ESTIMATORS
from fine_cli.estimators.fine_method import QUERY_CHUNK
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.samples import SignalView, first_checkpoints, resolve_window
from fine_cli.estimators.view import signal_view
from fine_cli.results import Influence, Signals, make_meta

SIGNALS_REQUIRED = Signals.REQUIRED

__all__ = ["QUERY_CHUNK", "SIGNALS_REQUIRED", "EstimateOptions", "method_arrays", "run"]


def method_arrays(
    sig: SignalView, method: registry.Method, opts: EstimateOptions
) -> dict[str, np.ndarray]:
    """``scores`` (q, G) of ``method`` on ``sig``, with the extras it gives (stderr, pvalue)."""
    if method.full is not None:
        return method.full(sig, opts)
    assert method.score is not None
    if sig.mode == "self":
        return {"scores": method.score(sig, None, opts)}
    parts = [
        method.score(sig, slice(s, s + QUERY_CHUNK), opts)
        for s in range(0, sig.n_queries, QUERY_CHUNK)
    ]
    return {"scores": np.concatenate(parts, axis=0)}


def run(
    signals: Signals,
    method: str,
    options: EstimateOptions | None = None,
    out_dir: str | Path | None = None,
) -> Influence:
    """Score every (query, subset) pair with ``method`` (a registered name).

    For f-INE the estimator, checkpoint truncation, bootstrap standard errors and
    permutation p-values follow ``options``; the baselines use ``options.checkpoints`` only.
    Signals mapped from a directory are scored block by block where the method allows
    (:mod:`fine_cli.stages.estimate_stream`), the arrays written to ``out_dir`` if given.
    """
    with keep_freed_memory():  # work arrays reused block after block (fine_cli/allocator.py)
        return _run(signals, method, options, out_dir)


def _run(
    signals: Signals,
    method: str,
    options: EstimateOptions | None,
    out_dir: str | Path | None,
) -> Influence:
    from fine_cli.stages import estimate_stream

    if estimate_stream.streams(signals, method):
        return estimate_stream.run(signals, method, options, out_dir)
    opts = options or EstimateOptions()
    found = registry.get(method)
    sig = signal_view(signals)
    opts.check(sig.n_checkpoints)
    n_ckpt_all = sig.n_checkpoints
    window = resolve_window(sig, opts.checkpoints)
    if window is not None:
        sig = first_checkpoints(sig, window)
    stats = method_arrays(sig, found, opts)
    scores = stats.pop("scores")
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
        "checkpoints_rule": opts.checkpoints if opts.checkpoints is not None else "all",
    }
    if found.meta is not None:
        extra.update(found.meta(sig, opts))
    extra.update(_caveats(method, sig, arrays, opts.estimator))
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
    return Influence(arrays=arrays, meta=meta, source="memory")


def _caveats(
    method: str, sig: SignalView, arrays: dict[str, np.ndarray], estimator: str
) -> dict[str, Any]:
    """``warnings`` (sentences the CLI prints) and ``undefined`` (arrays holding nan, with
    the reason): f-INE from fewer than MIN_SE_SAMPLES samples per distribution (rb: fewer
    than MIN_SE_CHECKPOINTS checkpoints, as its per-checkpoint moments integrate the probe
    pairs out), and standard errors that are undefined (docs/ROBUSTNESS.md)."""
    warnings: list[str] = []
    undefined: dict[str, str] = {}
    if method == "fine" and estimator in MOMENT_ESTIMATORS:
        if sig.n_checkpoints < null.MIN_SE_CHECKPOINTS:
            warnings.append(
                f"f-INE scores ({estimator}) from only {sig.n_checkpoints} checkpoint(s) are "
                f"unreliable: they vary between checkpoints, and {null.MIN_SE_CHECKPOINTS} or "
                "more are advised (collect more checkpoints, or --checkpoints all)."
            )
    elif method == "fine" and sig.n_samples < null.MIN_SE_SAMPLES:
        warnings.append(
            f"f-INE scores from only {sig.n_samples} samples per distribution (checkpoints x "
            f"probe pairs) are unreliable; {null.MIN_SE_SAMPLES} or more are advised."
        )
    se = arrays.get("stderr")
    if se is not None and np.isnan(se).any():
        by_checkpoint = sig.n_checkpoints if estimator in MOMENT_ESTIMATORS else 0
        reason = null.stderr_reason(sig.n_samples, int(np.isnan(se).sum()), se.size, by_checkpoint)
        undefined["stderr"] = reason
        warnings.append(f"standard errors are nan: {reason}.")
    out: dict[str, Any] = {}
    if warnings:
        out["warnings"] = warnings
    if undefined:
        out["undefined"] = undefined
    return out
