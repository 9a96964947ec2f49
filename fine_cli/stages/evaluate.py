"""``fine evaluate recall``: how well rankings find the flipped training labels.

For each ranking file (``fine rank``), the recall of flipped points among the top-p%
at each p of the grid, the normalised area under that recall curve next to the area of
the ideal ranking, and AUROC / AUPRC of the ranking's scores against ``is_flipped``.
Returns a :class:`RecallReport`; printing and plotting are the caller's.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli import metrics
from fine_cli.artifacts import Artifact, check_shape, load_artifact, require_finite
from fine_cli.errors import FineError

RANKING_ARRAYS = ("order", "score", "is_flipped")
# Used when a ranking's config does not say (same as EvaluateConfig's default).
DEFAULT_P_GRID = [float(p) for p in range(0, 101, 5)]


@dataclass
class RankingRecall:
    """Recall measures of one ranking; lists of length P follow ``p_grid``."""

    label: str  # unique within the report
    method: str  # meta["method"] of the ranking
    source: str  # the file it was read from ("" when built in memory)
    n: int  # ranked entries
    n_flipped: int  # ranked entries that are flipped
    p_grid: list[float]  # (P,) percentages
    recall: list[float]  # (P,) recall of flipped entries in the top-p%
    area: float  # normalised area under the recall curve
    ideal_recall: list[float]  # (P,) recall of the ideal ranking (flipped first)
    ideal_area: float  # area of the ideal ranking
    auroc: float  # of score vs is_flipped, higher score = ranked earlier
    auprc: float  # average precision, same orientation

    @property
    def noise_rate(self) -> float:
        return self.n_flipped / self.n

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["noise_rate"] = self.noise_rate
        # JSON has no NaN: undefined measures become null.
        return {k: _json_safe(v) for k, v in out.items()}


@dataclass
class RecallReport:
    """The recall measures of every ranking, in the order given."""

    rankings: list[RankingRecall]

    def to_dict(self) -> dict[str, Any]:
        return {"measure": "recall", "rankings": [r.to_dict() for r in self.rankings]}


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not np.isfinite(v):
        return None
    if isinstance(v, list):
        return [_json_safe(x) for x in v]
    return v


def load_rankings(paths: list[str]) -> list[Artifact]:
    """Load ranking files (``-`` = standard input, at most once); FineError on any problem."""
    if not paths:
        raise FineError("no ranking file given; pass one or more outputs of fine rank.", 2)
    if paths.count("-") > 1:
        raise FineError("'-' (standard input) can be given only once; pass the others as files.", 2)
    return [load_artifact(p, "ranking", required=RANKING_ARRAYS) for p in paths]


def run_recall(rankings: list[Artifact], p_grid: list[float] | None = None) -> RecallReport:
    """Recall, area under the recall curve, AUROC and AUPRC of each ranking.

    Args:
        rankings: ranking artifacts holding ``order``, ``score``, ``is_flipped`` (all
            ``(G,)``), as from :func:`load_rankings`.
        p_grid: percentages p at which recall is reported; None = each ranking's own
            ``config.evaluate.p_grid``, or 0, 5, ..., 100 when its config lacks one.

    Raises:
        FineError (exit code 3) for a ranking without flipped points, of multi-point
        subsets, with all points flipped, or with inconsistent arrays; exit code 2 for
        a bad ``p_grid``.
    """
    if not rankings:
        raise FineError("no ranking given; pass one or more outputs of fine rank.", 2)
    if p_grid is not None:
        _check_grid(p_grid, "p_grid")
    labels = _labels(rankings)
    results = []
    for art, label in zip(rankings, labels, strict=True):
        grid = p_grid if p_grid is not None else _grid_of(art, label)
        results.append(_evaluate_one(art, label, [float(p) for p in grid]))
    return RecallReport(rankings=results)


def _evaluate_one(art: Artifact, label: str, grid: list[float]) -> RankingRecall:
    flipped, score = _checked_arrays(art, label)
    n, n_flipped = int(flipped.size), int(flipped.sum())
    recall = metrics.recall_at(flipped, grid)
    ideal = metrics.ideal_recall(n, n_flipped, grid)
    return RankingRecall(
        label=label,
        method=str(art.meta.get("method", "unknown")),
        source=art.source,
        n=n,
        n_flipped=n_flipped,
        p_grid=list(grid),
        recall=recall.tolist(),
        area=metrics.recall_curve_area(grid, recall),
        ideal_recall=ideal.tolist(),
        ideal_area=metrics.recall_curve_area(grid, ideal),
        auroc=metrics.auroc(score, flipped),
        auprc=metrics.auprc(score, flipped),
    )


def _checked_arrays(art: Artifact, label: str) -> tuple[np.ndarray, np.ndarray]:
    """``is_flipped`` ``(G,)`` bool and scores ``(G,)`` oriented so higher = ranked earlier."""
    for key in RANKING_ARRAYS:
        if key not in art:
            raise FineError(
                f"ranking '{label}' lacks the array '{key}'; re-create it with fine rank.", 3
            )
    check_shape(art, "order", (None,))
    g = int(art["order"].shape[0])
    for key in RANKING_ARRAYS:
        check_shape(art, key, (g,))
    if g == 0:
        raise FineError(f"ranking '{label}' is empty; re-create it with fine rank.", 3)
    require_finite(art, ("score",))
    if "train_index" in art and np.any(np.asarray(art["train_index"]) < 0):
        raise FineError(
            f"ranking '{label}' ranks multi-point subsets, for which is_flipped does not "
            "mark one mislabelled point; recall needs a ranking of single training points.",
            3,
        )
    flipped = np.asarray(art["is_flipped"]).astype(np.bool_)
    if not flipped.any():
        raise FineError(
            f"ranking '{label}' has no flipped points, and recall needs known flipped points "
            "(train with data.label_noise > 0).",
            3,
        )
    if flipped.all():
        raise FineError(
            f"ranking '{label}' has only flipped points, so recall cannot tell rankings "
            "apart; train with data.label_noise < 1.",
            3,
        )
    return flipped, _oriented(np.asarray(art["score"], dtype=np.float64), label)


def _oriented(score: np.ndarray, label: str) -> np.ndarray:
    """Scores ``(G,)`` in rank order, negated if they ascend, so higher = ranked earlier."""
    step = np.diff(score)
    if np.all(step <= 0):
        return score
    if np.all(step >= 0):
        return -score
    raise FineError(
        f"ranking '{label}' has scores that are not sorted along its order; it is "
        "inconsistent; re-create it with fine rank.",
        3,
    )


def _grid_of(art: Artifact, label: str) -> list[float]:
    cfg = art.meta.get("config")
    section = cfg.get("evaluate") if isinstance(cfg, dict) else None
    grid = section.get("p_grid") if isinstance(section, dict) else None
    if grid is None:
        return list(DEFAULT_P_GRID)
    _check_grid(grid, f"config.evaluate.p_grid of ranking '{label}'")
    return [float(p) for p in grid]


def _check_grid(grid: Any, name: str) -> None:
    ok = isinstance(grid, (list, tuple)) and len(grid) > 0
    ok = ok and all(
        isinstance(p, (int, float)) and not isinstance(p, bool) and 0 <= p <= 100 for p in grid
    )
    if not ok:
        raise FineError(
            f"{name} must be a non-empty list of percentages in [0, 100], got {grid!r}; "
            "e.g. evaluate.p_grid=[0,10,20,50,100].",
            2,
        )


def _labels(rankings: list[Artifact]) -> list[str]:
    """meta["method"] of each ranking, made unique with the file name, then a counter."""
    methods = [str(a.meta.get("method", "ranking")) for a in rankings]
    counts = Counter(methods)
    labels = []
    for art, method in zip(rankings, methods, strict=True):
        name = Path(art.source).name if art.source not in ("", "-") else "stdin"
        labels.append(method if counts[method] == 1 else f"{method} ({name})")
    seen: Counter[str] = Counter()
    unique = []
    total = Counter(labels)
    for lab in labels:
        seen[lab] += 1
        unique.append(lab if total[lab] == 1 else f"{lab} #{seen[lab]}")
    return unique
