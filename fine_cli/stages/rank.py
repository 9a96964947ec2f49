"""Stage 3: influence -> training subsets ordered from most to least influential."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from fine_cli import selection
from fine_cli.errors import ConfigError
from fine_cli.estimators.null import min_selectable
from fine_cli.results import Influence, Ranking, Result, check_shape, make_meta, require_finite

INFLUENCE_REQUIRED = Influence.REQUIRED
# The scale on which the typical null (fine_cli/selection.py) was calibrated for each
# estimator's self-mode scores (docs/statistics.md, section 8): paired's spread is mostly
# estimation noise, about normal; rb's is the points' own heterogeneity, about
# log-normal. Other estimators, and test mode (signed scores, not calibrated), get the
# linear scale and a warning.
TYPICAL_SCALE = {"paired": "linear", "rb": "log"}
Aggregate = Literal["mean", "sum"]


def run(
    influence: Influence,
    query: int | None = None,
    aggregate: Aggregate = "mean",
    fdr: float | None = None,
    null: str = "typical",
    scale: str | None = None,
) -> Ranking:
    """Order subsets by score (one test point, or aggregated over all of them).

    For one query, the influence file's ``stderr`` and ``pvalue`` (G,) follow the order;
    ``fdr`` = q adds ``qvalue`` and ``selected`` (G,), a selection at false discovery
    rate q against ``null`` (fine_cli/selection.py): ``typical`` (more influential than
    a typical subset; adds ``pvalue_typical``) or ``zero`` (any influence at all: BH on
    the permutation p-values). The typical null is fitted on ``scale`` (linear or log;
    None: the one calibrated for the file's estimator, TYPICAL_SCALE).
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
    estimator = influence.meta.get("estimator")
    if scale is not None and scale not in selection.SCALES:
        raise ConfigError(
            f"--null-scale must be one of auto, {', '.join(selection.SCALES)}; got {scale!r}."
        )
    self_mode = influence.meta.get("mode") == "self"
    calibrated = TYPICAL_SCALE.get(str(estimator)) if self_mode else None
    on = scale or calibrated or "linear"
    extras, fdr_meta = _per_query_extras(influence, row, fdr, null, on)
    if "fdr" in fdr_meta and null == "typical" and calibrated != on:
        known = ", ".join(f"{k} on the {v} scale" for k, v in TYPICAL_SCALE.items())
        what = f"'{estimator}' on the {on} scale" if self_mode else "test mode"
        fdr_meta["fdr"]["warning"] = (
            f"the typical null is calibrated for self-mode scores of {known} "
            f"(docs/statistics.md, section 8), not for {what}: the false discovery rate "
            "of this list is not checked"
        )
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
    return Ranking(arrays=arrays, meta=meta, source="memory")


def _per_query_extras(
    influence: Result,
    row: int | None,
    fdr: float | None,
    null: str = "typical",
    on: str = "linear",
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """stderr, pvalue (and with ``fdr``: qvalue, selected, and for the typical null
    pvalue_typical), each (G,), of query ``row``; and the meta of the selection."""
    present = [k for k in ("stderr", "pvalue") if k in influence]
    if fdr is not None and not 0.0 < fdr < 1.0:
        raise ConfigError(f"--fdr must lie strictly between 0 and 1, e.g. 0.05; got {fdr}.")
    if null not in selection.NULLS:
        raise ConfigError(f"--null must be one of {', '.join(selection.NULLS)}; got {null!r}.")
    if row is None:
        if fdr is not None:
            raise ConfigError(
                "--fdr selects among the subsets of one test point; add --query K "
                "(p-values of an aggregate over test points are not defined)."
            )
        return {}, {}
    need = "pvalue" if null == "zero" else "stderr"
    if fdr is not None and need not in influence:
        raise ConfigError(
            "--fdr --null typical needs bootstrap standard errors (stderr), which this "
            "influence file lacks; re-run fine estimate with --method fine and --bootstrap B "
            "(B >= 2; 200 by default), or use --null zero with p-values from fine estimate "
            "--permutations K."
            if null == "typical"
            else "--fdr --null zero needs p-values, which this influence file lacks; re-run "
            "fine estimate with --method fine and --permutations K (K > 0)."
        )
    out = {}
    for k in present:
        check_shape(influence, k, influence["scores"].shape)
        out[k] = np.asarray(influence[k][row], dtype=np.float64)
    require_finite(influence, tuple(present))
    if fdr is None:
        return out, {}
    # The typical null uses the standard errors only for its scale's floor (their median
    # in the central window): a few undefined ones (a point whose samples do not vary) are
    # left out of it; most of them undefined leaves no floor, and the selection is refused.
    if null == "typical" and np.isnan(out["stderr"]).mean() > 0.5:  # undefined, with a reason
        reason = (influence.meta.get("undefined") or {}).get("stderr", "they are nan")
        raise ConfigError(
            f"--fdr --null typical needs the scores' standard errors, which are undefined "
            f"here: {reason}; or use --null zero with p-values from fine estimate "
            "--permutations K."
        )
    scores = np.asarray(influence["scores"][row], dtype=np.float64)
    sel = selection.select(
        scores, fdr, null, stderr=out.get("stderr"), pvalues=out.get("pvalue"), on=on
    )
    out["qvalue"], out["selected"] = sel.qvalue, sel.selected
    meta: dict[str, Any] = {"q": fdr, "selected": int(sel.selected.sum()), "null": null}
    meta["pi0"] = float(sel.pi0)
    if sel.fit is not None:
        out["pvalue_typical"] = sel.pvalue
        fit = sel.fit
        meta.update(
            alternative="greater",
            scale_on=fit.on,
            excluded=fit.excluded,
            loc=fit.loc,
            scale=fit.scale,
            fitted_scale=None if np.isnan(fit.fitted_scale) else fit.fitted_scale,
            scale_floor=fit.floor,
            fitted=fit.fitted,
        )
    else:
        perm = influence.meta.get("permutations") or {}
        n_perm, side = int(perm.get("draws", 0)), str(perm.get("alternative", "two-sided"))
        n_g = scores.shape[0]
        meta.update(
            alternative=side,
            min_selectable=min_selectable(n_g, n_perm, fdr, side) if n_perm else None,
        )
    return out, {"fdr": meta}
