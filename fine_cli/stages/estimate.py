"""Stage 2: signals -> influence scores of every (query, subset) pair, by one method."""

from __future__ import annotations

from typing import Any

import numpy as np

from fine_cli.artifacts import Artifact, check_shape, make_meta, require_finite
from fine_cli.errors import FineError
from fine_cli.estimators import METHODS, Signals
from fine_cli.estimators.fine import clip_bounds

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


def signals_view(art: Artifact) -> Signals:
    """Validate a signals artifact's shapes and build the numeric view the estimators use."""
    mode = art.meta.get("mode")
    if mode not in ("self", "test"):
        raise FineError(
            f"signals file has unknown mode {mode!r}; re-create it with train-collect.", 3
        )
    if mode == "test":
        missing = [k for k in TEST_REQUIRED if k not in art]
        if missing:
            raise FineError(
                f"test-mode signals lack {', '.join(missing)}; re-create them with train-collect.",
                3,
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
        raise FineError(
            "signals 'probe_idx' points outside the training set; the file is damaged.", 3
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
                raise FineError("signals groups (group_ptr/group_members) are inconsistent.", 3)
            sig.group_ptr, sig.group_members = ptr, mem
    return sig


def run(signals: Artifact, method: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Score every (query, subset) pair; returns (arrays, meta) of an influence artifact."""
    if method not in METHODS:
        raise FineError(f"unknown method '{method}'; choose one of {', '.join(METHODS)}.")
    sig = signals_view(signals)
    fn = METHODS[method]
    if sig.mode == "self":
        scores = fn(sig, None)
    else:
        parts = [fn(sig, slice(s, s + QUERY_CHUNK)) for s in range(0, sig.n_queries, QUERY_CHUNK)]
        scores = np.concatenate(parts, axis=0)
    if not np.all(np.isfinite(scores)):
        raise FineError(
            f"method '{method}' produced non-finite scores; the signals are degenerate.", 4
        )
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
    }
    extra: dict[str, Any] = {}
    if method == "fine":
        (a_lo, a_hi), (b_lo, b_hi) = clip_bounds(sig.n_samples, sig.n_samples)
        extra = {"estimator": "alg2", "clip": {"alpha": [a_lo, a_hi], "beta": [b_lo, b_hi]}}
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
