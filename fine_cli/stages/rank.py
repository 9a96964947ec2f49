"""Stage 3: influence -> training subsets ordered from most to least influential."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from fine_cli.artifacts import Artifact, check_shape, make_meta, require_finite
from fine_cli.errors import FineError

INFLUENCE_REQUIRED = (
    "scores",
    "query_index",
    "train_index",
    "labels",
    "flip_mask",
    "group_ptr",
    "group_members",
)
Aggregate = Literal["mean", "sum"]


def run(
    influence: Artifact, query: int | None = None, aggregate: Aggregate = "mean"
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Order subsets by score (one test point, or aggregated over all of them)."""
    scores = influence["scores"]
    ptr, members = influence["group_ptr"], influence["group_members"]
    n_q, n_g = scores.shape if scores.ndim == 2 else (0, 0)
    check_shape(influence, "scores", (None, ptr.shape[0] - 1))
    require_finite(influence, ("scores",))
    if query is not None:
        if not 0 <= query < n_q:
            raise FineError(
                f"--query {query} is out of range: the file has {n_q} test point(s) (0..{n_q - 1})."
            )
        col, label = scores[query], str(query)
    elif n_q == 1:
        col, label = scores[0], "self" if influence.meta.get("mode") == "self" else "0"
    else:
        col = scores.mean(axis=0) if aggregate == "mean" else scores.sum(axis=0)
        label = aggregate
    # Stable sort on -score: equal scores keep their training order (reproducible ties).
    order = np.argsort(-col, kind="stable")
    sizes = np.diff(ptr)
    single = sizes == 1
    first = members[ptr[:-1]]
    flip = influence["flip_mask"].astype(bool)
    flipped_any = (
        np.logical_or.reduceat(flip[members], ptr[:-1]) if members.size else np.zeros(n_g, bool)
    )
    train_index = np.where(single, influence["train_index"][first], -1)
    label_arr = np.where(single, influence["labels"][first], -1)
    arrays = {
        "order": order.astype(np.int64),
        "score": col[order].astype(np.float64),
        "train_index": train_index[order].astype(np.int64),
        "is_flipped": flipped_any[order],
        "label": label_arr[order].astype(np.int64),
        "group_size": sizes[order].astype(np.int64),
    }
    meta = make_meta(
        "ranking",
        method=influence.meta.get("method"),
        mode=influence.meta.get("mode"),
        query=label,
        config=influence.meta.get("config"),
        influence_sha256=influence.sha256,
        seeds=influence.meta.get("seeds"),
    )
    return arrays, meta
