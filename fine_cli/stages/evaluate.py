"""``fine evaluate recall | consistency | variability``: how good and how stable rankings are.

Recall (one ranking per method):

For each ranking file (``fine rank``), the recall of flipped points among the top-p%
at each p of the grid, the normalised area under that recall curve next to the area of
the ideal ranking, and AUROC / AUPRC of the ranking's scores against ``is_flipped``.
Returns a :class:`RecallReport`; printing and plotting are the caller's.

Across runs (several RUN directories, one per training seed, each holding
``ranking-<method>.npz``): the consistency of the top-p% sets (mean pairwise Jaccard,
the paper's Fig. 2) and the variability of each entry's score (mean coefficient of
variation over the top-p%, Fig. 8), per method; an :class:`AcrossRunsReport`.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fine_cli import metrics
from fine_cli.artifacts import check_made_from, load_artifact
from fine_cli.errors import ConfigError, InputFileError
from fine_cli.results import Ranking, Result, check_shape, require_finite

RANKING_ARRAYS = Ranking.REQUIRED
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


def load_rankings(paths: list[str]) -> list[Result]:
    """Load ranking files (``-`` = standard input, at most once); FineError on any problem."""
    if not paths:
        raise ConfigError("no ranking file given; pass one or more outputs of fine rank.")
    if paths.count("-") > 1:
        raise ConfigError("'-' (standard input) can be given only once; pass the others as files.")
    return [load_artifact(p, "ranking", required=RANKING_ARRAYS) for p in paths]


def run_recall(rankings: Sequence[Result], p_grid: list[float] | None = None) -> RecallReport:
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
        raise ConfigError("no ranking given; pass one or more outputs of fine rank.")
    if p_grid is not None:
        _check_grid(p_grid, "p_grid")
    labels = _labels(rankings)
    results = []
    for art, label in zip(rankings, labels, strict=True):
        grid = p_grid if p_grid is not None else _grid_of(art, label)
        results.append(_evaluate_one(art, label, [float(p) for p in grid]))
    return RecallReport(rankings=results)


def _evaluate_one(art: Result, label: str, grid: list[float]) -> RankingRecall:
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


def _checked_arrays(art: Result, label: str) -> tuple[np.ndarray, np.ndarray]:
    """``is_flipped`` ``(G,)`` bool and scores ``(G,)`` oriented so higher = ranked earlier."""
    for key in RANKING_ARRAYS:
        if key not in art:
            raise InputFileError(
                f"ranking '{label}' lacks the array '{key}'; re-create it with fine rank."
            )
    check_shape(art, "order", (None,))
    g = int(art["order"].shape[0])
    for key in RANKING_ARRAYS:
        check_shape(art, key, (g,))
    if g == 0:
        raise InputFileError(f"ranking '{label}' is empty; re-create it with fine rank.")
    require_finite(art, ("score",))
    if "train_index" in art and np.any(np.asarray(art["train_index"]) < 0):
        raise InputFileError(
            f"ranking '{label}' ranks multi-point subsets, for which is_flipped does not "
            "mark one mislabelled point; recall needs a ranking of single training points.",
        )
    flipped = np.asarray(art["is_flipped"]).astype(np.bool_)
    if not flipped.any():
        raise InputFileError(
            f"ranking '{label}' has no flipped points, and recall needs known flipped points "
            "(train with data.label_noise > 0).",
        )
    if flipped.all():
        raise InputFileError(
            f"ranking '{label}' has only flipped points, so recall cannot tell rankings "
            "apart; train with data.label_noise < 1.",
        )
    return flipped, _oriented(np.asarray(art["score"], dtype=np.float64), label)


def _oriented(score: np.ndarray, label: str) -> np.ndarray:
    """Scores ``(G,)`` in rank order, negated if they ascend, so higher = ranked earlier."""
    step = np.diff(score)
    if np.all(step <= 0):
        return score
    if np.all(step >= 0):
        return -score
    raise InputFileError(
        f"ranking '{label}' has scores that are not sorted along its order; it is "
        "inconsistent; re-create it with fine rank.",
    )


def _grid_of(art: Result, label: str) -> list[float]:
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
        raise ConfigError(
            f"{name} must be a non-empty list of percentages in [0, 100], got {grid!r}; "
            "e.g. evaluate.p_grid=[0,10,20,50,100].",
        )


def _labels(rankings: Sequence[Result]) -> list[str]:
    """meta["method"] of each ranking, made unique with the estimator (f-INE), else the
    file name, then a counter."""
    methods = [str(a.meta.get("method", "ranking")) for a in rankings]
    counts = Counter(methods)
    with_est = [
        f"{m} ({a.meta['estimator']})" if a.meta.get("estimator") else m
        for a, m in zip(rankings, methods, strict=True)
    ]
    est_counts = Counter(with_est)
    labels = []
    for art, method, tagged in zip(rankings, methods, with_est, strict=True):
        name = Path(art.source).name if art.source not in ("", "-") else "stdin"
        if counts[method] == 1:
            labels.append(method)
        else:
            labels.append(tagged if est_counts[tagged] == 1 else f"{method} ({name})")
    seen: Counter[str] = Counter()
    unique = []
    total = Counter(labels)
    for lab in labels:
        seen[lab] += 1
        unique.append(lab if total[lab] == 1 else f"{lab} #{seen[lab]}")
    return unique


# ---- across runs: consistency (Fig. 2) and variability (Fig. 8) -------------------------

# A RUN directory's rankings: ranking-<method>.npz.
RANKING_PREFIX, RANKING_SUFFIX = "ranking-", ".npz"


@dataclass
class MethodAcrossRuns:
    """One method's measure at each p of the grid, over ``runs`` runs."""

    method: str
    runs: int
    n: int  # ranked entries per run
    p_grid: list[float]  # (P,) percentages, p > 0
    values: list[float]  # (P,) mean pairwise Jaccard, or mean coefficient of variation

    def at(self, p: float) -> float:
        """The value at ``p`` of the grid (NaN when ``p`` is not on it)."""
        return dict(zip(self.p_grid, self.values)).get(float(p), float("nan"))

    def to_dict(self) -> dict[str, Any]:
        return {k: _json_safe(v) for k, v in asdict(self).items()}


@dataclass
class AcrossRunsReport:
    """Consistency or variability of every method, in the order of ``methods``."""

    measure: str  # "consistency" or "variability"
    run_dirs: list[str]  # (runs,) the RUN directories, as given
    methods: list[MethodAcrossRuns]

    def to_dict(self) -> dict[str, Any]:
        return {
            "measure": self.measure,
            "runs": list(self.run_dirs),
            "methods": [m.to_dict() for m in self.methods],
        }


def load_runs(run_dirs: list[str], methods: list[str] | None = None) -> dict[str, list[Result]]:
    """The rankings of each method in each RUN directory: ``{method: [ranking per run]}``.

    A RUN is a directory holding one training run's rankings, named
    ``ranking-<method>.npz`` (as ``fine run`` and ``make demo`` write them). Without
    ``methods``, every method whose ranking is in all runs is taken.

    Raises:
        FineError: fewer than two runs, a run given twice, a path that is not a
            directory, a method missing from a run, or no method common to all runs.
    """
    if len(run_dirs) < 2:
        raise ConfigError(
            f"got {len(run_dirs)} run directory; comparing runs needs at least two "
            "(e.g. runs/mislabel_recall/seed-0 runs/mislabel_recall/seed-1).",
        )
    resolved = [Path(d).resolve() for d in run_dirs]
    for d, r in zip(run_dirs, resolved, strict=True):
        if not r.is_dir():
            what = "does not exist" if not r.exists() else "is not a directory"
            raise InputFileError(
                f"run '{d}' {what}; pass directories holding ranking-<method>.npz files "
                "(one per training run, as fine run writes them).",
            )
    dupes = [d for d, r in zip(run_dirs, resolved, strict=True) if resolved.count(r) > 1]
    if dupes:
        raise ConfigError(f"run '{dupes[0]}' is given twice; pass each run once.")
    found = [_methods_in(r) for r in resolved]
    if methods:
        for d, have in zip(run_dirs, found, strict=True):
            lacking = [m for m in methods if m not in have]
            if lacking:
                raise InputFileError(
                    f"run '{d}' has no ranking-{lacking[0]}.npz; rank that method there "
                    "(fine estimate, fine rank) or leave it out of --method.",
                )
        chosen = list(dict.fromkeys(methods))
    else:
        common = set.intersection(*found)
        if not common:
            raise InputFileError(
                "the runs have no ranking-<method>.npz in common; rank the same methods in "
                "every run.",
            )
        chosen = sorted(common, key=_method_order)
    loaded = {
        m: [load_artifact(str(r / f"ranking-{m}.npz"), "ranking", RANKING_ARRAYS) for r in resolved]
        for m in chosen
    }
    for m, rankings in loaded.items():
        for r, ranking in zip(resolved, rankings, strict=True):
            _check_beside(ranking, r / f"influence-{m}.npz")
    return loaded


def _check_beside(ranking: Result, influence: Path) -> None:
    """A RUN directory names a ranking's input: ``influence-<method>.npz`` beside it. When
    that file is there, the ranking must have been made from it (not left over from an
    earlier estimate)."""
    if influence.is_file() and ranking.meta.get("influence_sha256"):
        check_made_from(ranking, load_artifact(str(influence), "influence"))


def _methods_in(run: Path) -> set[str]:
    pattern = f"{RANKING_PREFIX}*{RANKING_SUFFIX}"
    return {p.name[len(RANKING_PREFIX) : -len(RANKING_SUFFIX)] for p in run.glob(pattern)}


def _method_order(method: str) -> tuple[int, str]:
    from fine_cli import registry

    names = registry.names()
    return (names.index(method) if method in names else len(names), method)


def run_consistency(
    runs: dict[str, list[Result]], p_grid: list[float] | None = None, run_dirs: Sequence[str] = ()
) -> AcrossRunsReport:
    """Mean pairwise Jaccard of the top-p% sets across runs, per method (the paper's
    consistency score, Section 1 and Fig. 2): 1 = the same top set in every run."""

    def measure(orders: list[np.ndarray], scores: np.ndarray, p: float) -> float:
        return metrics.jaccard_consistency(orders, p)

    return _across(runs, p_grid, list(run_dirs), "consistency", measure)


def run_variability(
    runs: dict[str, list[Result]], p_grid: list[float] | None = None, run_dirs: Sequence[str] = ()
) -> AcrossRunsReport:
    """Mean coefficient of variation across runs of each entry's score, over the top-p%
    (Fig. 8): std over runs / |mean over runs| per entry (population std), averaged over
    the top-p% of the entries ranked by their mean score across runs. Lower = steadier."""

    def measure(orders: list[np.ndarray], scores: np.ndarray, p: float) -> float:
        consensus = np.argsort(-scores.mean(axis=0), kind="stable")
        top = consensus[: metrics.top_k(p, consensus.size)]
        return metrics.coefficient_of_variation(scores, top)

    return _across(runs, p_grid, list(run_dirs), "variability", measure)


def _across(
    runs: dict[str, list[Result]],
    p_grid: list[float] | None,
    run_dirs: list[str],
    measure: str,
    fn: Any,
) -> AcrossRunsReport:
    if not runs:
        raise ConfigError("no method to compare across runs.")
    if p_grid is not None:
        _check_grid(p_grid, "p_grid")
    out = []
    for method, arts in runs.items():
        orders, scores = _aligned(method, arts)
        grid = p_grid if p_grid is not None else _grid_of(arts[0], method)
        grid = [float(p) for p in grid if p > 0]
        if not grid:
            raise ConfigError("the p grid holds only 0; give percentages above 0.")
        values = [fn(orders, scores, p) for p in grid]
        out.append(MethodAcrossRuns(method, len(arts), int(scores.shape[1]), grid, values))
    return AcrossRunsReport(measure=measure, run_dirs=run_dirs, methods=out)


def _aligned(method: str, arts: list[Result]) -> tuple[list[np.ndarray], np.ndarray]:
    """Per run, the ranking's subset positions best first ``(G,)``, and scores
    ``(runs, G)`` indexed by subset position; refuses runs that cannot be compared."""
    if len(arts) < 2:
        raise ConfigError(f"method '{method}' has a ranking in {len(arts)} run only; need 2+.")
    orders, scores = [], []
    first = arts[0]
    for art in arts:
        label = f"{method} ({art.source})"
        check_shape(art, "order", (None,))
        g = int(art["order"].shape[0])
        check_shape(art, "score", (g,))
        require_finite(art, ("score",))
        order = np.asarray(art["order"], dtype=np.int64)
        if g != first["order"].shape[0] or not np.array_equal(np.sort(order), np.arange(g)):
            raise InputFileError(
                f"ranking '{label}' does not rank the same {first['order'].shape[0]} subsets as "
                f"'{first.source}'; compare runs trained on the same data.",
            )
        if "train_index" in art and "train_index" in first:
            same = np.array_equal(
                np.asarray(art["train_index"])[np.argsort(order)],
                np.asarray(first["train_index"])[np.argsort(first["order"])],
            )
            if not same:
                raise InputFileError(
                    f"ranking '{label}' ranks other training points than '{first.source}'; "
                    "compare runs trained on the same data (same data.* settings).",
                )
        if art.meta.get("query") != first.meta.get("query"):
            raise InputFileError(
                f"ranking '{label}' ranks for query {art.meta.get('query')!r} but "
                f"'{first.source}' for {first.meta.get('query')!r}; rank every run the same way.",
            )
        per_subset = np.empty(g, dtype=np.float64)
        per_subset[order] = np.asarray(art["score"], dtype=np.float64)
        orders.append(order)
        scores.append(per_subset)
    _refuse_same_seed(method, arts)
    return orders, np.stack(scores)


def _refuse_same_seed(method: str, arts: list[Result]) -> None:
    seen: dict[str, str] = {}
    for art in arts:
        seeds = art.meta.get("seeds")
        if not seeds:
            continue
        key = json.dumps(seeds, sort_keys=True)
        if key in seen:
            raise InputFileError(
                f"the {method} rankings '{seen[key]}' and '{art.source}' come from the same "
                "training seeds, so they agree trivially; compare runs of different seeds.",
            )
        seen[key] = art.source
