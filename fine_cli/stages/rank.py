"""Stage 3: influence -> training subsets ordered from most to least influential."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from fine_cli.errors import ConfigError
from fine_cli.estimators import null
from fine_cli.results import Ranking, Result, check_shape, make_meta, require_finite

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
    influence: Result,
    query: int | None = None,
    aggregate: Aggregate = "mean",
    fdr: float | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Order subsets by score (one test point, or aggregated over all of them).

    For one query, the influence file's ``stderr`` and ``pvalue`` (G,) follow the order;
    ``fdr`` = q adds Benjamini-Hochberg adjusted p-values ``qvalue`` and ``selected``.
    """
    scores = influence["scores"]
    ptr, members = influence["group_ptr"], influence["group_members"]
    n_q, n_g = scores.shape if scores.ndim == 2 else (0, 0)
    check_shape(influence, "scores", (None, ptr.shape[0] - 1))
    require_finite(influence, ("scores",))
    row: int | None = None
    if query is not None:
        if not 0 <= query < n_q:
            raise ConfigError(
                f"--query {query} is out of range: the file has {n_q} test point(s) (0..{n_q - 1})."
            )
        row, label = query, str(query)
        col = scores[query]
    elif n_q == 1:
        row, label = 0, "self" if influence.meta.get("mode") == "self" else "0"
        col = scores[0]
    else:
        col = scores.mean(axis=0) if aggregate == "mean" else scores.sum(axis=0)
        label = aggregate
    extras = _per_query_extras(influence, row, fdr)
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
        **{k: v[order] for k, v in extras.items()},
    }
    fdr_meta: dict[str, Any] = {}
    if fdr is not None:
        perm = influence.meta.get("permutations") or {}
        n_perm, side = int(perm.get("draws", 0)), str(perm.get("alternative", "two-sided"))
        fdr_meta = {
            "fdr": {
                "q": fdr,
                "selected": int(extras["selected"].sum()),
                "alternative": side,
                "min_selectable": null.min_selectable(n_g, n_perm, fdr, side) if n_perm else None,
            }
        }
    meta = make_meta(
        "ranking",
        method=influence.meta.get("method"),
        mode=influence.meta.get("mode"),
        query=label,
        config=influence.meta.get("config"),
        influence_sha256=influence.sha256,
        seeds=influence.meta.get("seeds"),
        estimator=influence.meta.get("estimator"),
        **fdr_meta,
    )
    return arrays, meta


def _per_query_extras(
    influence: Result, row: int | None, fdr: float | None
) -> dict[str, np.ndarray]:
    """stderr, pvalue (and qvalue, selected with ``fdr``), each (G,), of query ``row``."""
    present = [k for k in ("stderr", "pvalue") if k in influence]
    if fdr is not None and not 0.0 < fdr < 1.0:
        raise ConfigError(f"--fdr must lie strictly between 0 and 1, e.g. 0.05; got {fdr}.")
    if row is None:
        if fdr is not None:
            raise ConfigError(
                "--fdr selects among the subsets of one test point; add --query K "
                "(p-values of an aggregate over test points are not defined)."
            )
        return {}
    if fdr is not None and "pvalue" not in influence:
        raise ConfigError(
            "--fdr needs p-values, which this influence file lacks; re-run fine estimate "
            "with --method fine and --permutations K (K > 0)."
        )
    out = {}
    for k in present:
        check_shape(influence, k, influence["scores"].shape)
        out[k] = np.asarray(influence[k][row], dtype=np.float64)
    require_finite(influence, tuple(present))
    if fdr is not None:
        selected, adjusted = null.benjamini_hochberg(out["pvalue"], fdr)
        out["qvalue"], out["selected"] = adjusted, selected
    return out


def rank_result(influence: Result, **options: Any) -> Ranking:
    """:func:`run` returning a typed :class:`~fine_cli.results.Ranking` (same options)."""
    arrays, meta = run(influence, **options)
    return Ranking(arrays=arrays, meta=meta, source="memory")
