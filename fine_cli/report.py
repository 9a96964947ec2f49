"""The report of ``fine run``: markdown, figures and numbers beside each other.

``write(result, directory)`` writes ``<name>.md``, ``<name>.json`` (every number of the
report) and three figures, ``<name>-recall.png`` (the paper's Fig. 6: recall of flipped
labels in the top-p%, mean and standard deviation over seeds), ``<name>-consistency.png``
(Fig. 2: mean pairwise Jaccard of the top-p% sets across seeds) and
``<name>-variability.png`` (Fig. 8: mean coefficient of variation over the top-p%).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fine_cli.errors import ConfigError, RunError
from fine_cli.plots import save_png
from fine_cli.stages.evaluate import AcrossRunsReport
from fine_cli.stages.experiment import ExperimentResult, SeedRun, mean_sd

# The paper's numbers (MNIST MLP, 20% flips): Fig. 2's consistency scores, and Section
# 4.2's average recall advantage of f-INE over each baseline, in percent.
PAPER_CONSISTENCY = {"fine": 0.938, "trak": 0.736, "if": 0.567, "tracin": 0.564}
PAPER_RECALL_GAIN = {"tracin": 0.05, "trak": 13.85, "if": 3.83}
# Columns of the markdown tables (all of the grid is in the JSON).
TABLE_P = (5.0, 10.0, 20.0, 30.0, 50.0)
CV_TABLE_P = (5.0, 10.0, 20.0, 50.0, 100.0)
_DPI = 120
_SIZE_IN = (7.0, 5.0)


# The files of a report, from its name.
REPORT_FILES = ("{}.json", "{}-recall.png", "{}-consistency.png", "{}-variability.png", "{}.md")


def report_paths(directory: str | Path, name: str) -> list[Path]:
    """The report's files in ``directory``; a name that would leave it (``../x``, ``a/b``)
    is refused (config names are plain names, fine_cli/config.py)."""
    out = Path(directory)
    paths = [out / f.format(name) for f in REPORT_FILES]
    for p in paths:
        if p.parent != out or p.name in (".", "..") or os.sep in p.name:
            raise ConfigError(
                f"report name '{name}' would write outside '{directory}'; use a plain name "
                "(letters, digits, '.', '_' and '-')."
            )
    return paths


def prepare(directory: str | Path, name: str) -> Path:
    """Before the training: :func:`check_directory`, and lock the report against a second
    ``fine run`` writing it until the command ends. Returns the directory."""
    from fine_cli.artifacts import claim_output

    out = check_directory(directory, name)
    claim_output(report_paths(out, name)[-1], "--report-dir")
    return out


def check_directory(directory: str | Path, name: str) -> Path:
    """Create ``directory`` and check that every report file can be written there (a
    plain name; not a link, a device or a directory). Returns the directory."""
    from fine_cli.artifacts import check_output

    out = Path(directory)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RunError(
            f"cannot create report directory '{out}': {err.strerror}; pass another --report-dir."
        ) from None
    for p in report_paths(out, name):
        check_output(p, option="--report-dir")
    return out


def write(result: ExperimentResult, directory: str | Path, command: str = "") -> Path:
    """Write the report files into ``directory`` (created), each atomically; returns the
    markdown's path."""
    from fine_cli.artifacts import atomic_write

    out = check_directory(directory, result.name)
    json_path, recall_png, consistency_png, variability_png, path = report_paths(out, result.name)
    summary = summarize(result)
    text = json.dumps(_json_safe(summary), indent=2) + "\n"
    atomic_write(json_path, lambda fh: fh.write(text.encode()))
    save_png(recall_figure(summary), recall_png)
    save_png(
        across_figure(result.consistency, "Jaccard of the top-p% sets across seeds", log=False),
        consistency_png,
    )
    save_png(
        across_figure(result.variability, "mean coefficient of variation across seeds", log=True),
        variability_png,
    )
    md = markdown(result, summary, command)
    atomic_write(path, lambda fh: fh.write(md.encode()))
    return path


# ---- numbers -------------------------------------------------------------------------------


def summarize(result: ExperimentResult) -> dict[str, Any]:
    """Every number of the report, per method: means and standard deviations over seeds."""
    methods: dict[str, Any] = {}
    for i, method in enumerate(result.methods):
        per_seed = [rep.rankings[i] for rep in result.recall]
        grid = per_seed[0].p_grid
        recall = np.array([r.recall for r in per_seed])  # (seeds, P)
        methods[method] = {
            "auroc": mean_sd([r.auroc for r in per_seed]),
            "auprc": mean_sd([r.auprc for r in per_seed]),
            "area": mean_sd([r.area for r in per_seed]),
            "p_grid": grid,
            "recall_mean": recall.mean(axis=0).tolist(),
            "recall_sd": recall.std(axis=0, ddof=1).tolist(),
            "auroc_per_seed": [r.auroc for r in per_seed],
            "area_per_seed": [r.area for r in per_seed],
            "time": method_time(method, result.runs),
        }
    for rep, key in ((result.consistency, "consistency"), (result.variability, "variability")):
        for m in rep.methods:
            methods[m.method][key] = {"p_grid": m.p_grid, "values": m.values}
    first = result.recall[0].rankings[0]
    return {
        "name": result.name,
        "seeds": result.seeds,
        "data": result.data,
        "ideal": {"p_grid": first.p_grid, "recall": first.ideal_recall, "area": first.ideal_area},
        "methods": methods,
        "runs": [vars(r) for r in result.runs],
    }


def charged(method: str, r: SeedRun) -> tuple[float, float]:
    """(training, collection) seconds of run ``r`` that ``method`` is charged, by its
    registered cost (fine_cli.registry.Cost): f-INE both models; methods that read the main
    model only half of the two models' training (and collection, when they read the
    signals); TRAK the models of its ensemble and their features; influence functions the
    main model's training, features and curvature."""
    from fine_cli import registry

    proj = [v for k, v in r.features.items() if k.startswith("proj_model")]
    cost = registry.get(method).cost
    if cost == "both":  # whatever train-collect trained: main, and auxiliary when needed
        return r.train_s, r.collect_s
    share = 1.0 / r.models  # the main model's part of train_s and collect_s
    if cost == "main":
        return r.train_s * share, r.collect_s * share
    if cost == "main-train":
        return r.train_s * share, 0.0
    if cost == "ensemble":
        return r.train_s + r.train_extra_s, sum(proj)
    if cost == "crossval":  # its K fold models, trained and predicted; nothing of the main run
        return r.crossval_s, 0.0
    # main-features
    return r.train_s * share, (proj[0] if proj else math.nan) + r.features.get("ggn_s", math.nan)


def method_time(method: str, runs: list[SeedRun]) -> dict[str, tuple[float, float]]:
    """Seconds each method costs (mean, sd over seeds), split into training, collection and
    estimation (see :func:`charged`)."""
    parts: dict[str, list[float]] = {"train": [], "collect": [], "estimate": [], "total": []}
    for r in runs:
        train, collect = charged(method, r)
        est = r.estimate_s.get(method, math.nan)
        for key, v in (("train", train), ("collect", collect), ("estimate", est)):
            parts[key].append(v)
        parts["total"].append(train + collect + est)
    return {k: mean_sd(v) for k, v in parts.items()}


def _json_safe(v: Any) -> Any:
    if isinstance(v, float):
        return v if math.isfinite(v) else None
    if isinstance(v, dict):
        return {k: _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    return v


# ---- figures -------------------------------------------------------------------------------


def _axes() -> tuple[Figure, Any]:
    fig = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def recall_figure(summary: dict[str, Any]) -> Figure:
    """Fig. 6: mean recall over seeds with a band of one standard deviation, per method."""
    fig, ax = _axes()
    for method, s in summary["methods"].items():
        grid = np.asarray(s["p_grid"])
        mean, sd = np.asarray(s["recall_mean"]), np.asarray(s["recall_sd"])
        (line,) = ax.plot(
            grid, mean, marker="o", markersize=3, label=f"{method} (area {s['area'][0]:.3f})"
        )
        ax.fill_between(grid, mean - sd, mean + sd, color=line.get_color(), alpha=0.2)
    ideal = summary["ideal"]
    ax.plot(ideal["p_grid"], ideal["recall"], "k--", linewidth=1.2, label="ideal")
    ax.plot([0, 100], [0, 1], color="gray", linestyle=":", linewidth=1.2, label="random")
    n, f = summary["data"]["n"], summary["data"]["n_flipped"]
    ax.set(xlim=(0, 100), ylim=(0, 1.02), xlabel="top p% of the ranking", ylabel="recall")
    ax.set_title(f"Recall of flipped labels, {len(summary['seeds'])} seeds (n={n}, {f} flipped)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def across_figure(report: AcrossRunsReport, ylabel: str, log: bool) -> Figure:
    """Fig. 2 / Fig. 8: a measure across runs against p, one line per method."""
    fig, ax = _axes()
    for m in report.methods:
        values = np.asarray(m.values, dtype=np.float64)
        ok = np.isfinite(values) & ((values > 0) if log else True)
        ax.plot(np.asarray(m.p_grid)[ok], values[ok], marker="o", markersize=3, label=m.method)
    if log:
        ax.set_yscale("log")
    else:
        ax.set_ylim(0, 1.02)
    ax.set(xlim=(0, 100), xlabel="top p% of the ranking", ylabel=ylabel)
    ax.set_title(f"{report.measure} across {len(report.run_dirs)} runs (seeds)")
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


# ---- markdown ------------------------------------------------------------------------------


def _pm(ms: tuple[float, float] | list[float], digits: int = 3, signed: bool = False) -> str:
    mean, sd = ms
    if not math.isfinite(mean):
        return "n/a"
    sign = "+" if signed else ""
    return f"{mean:{sign}.{digits}f} ± {sd:.{digits}f}"


def _num(v: float, digits: int = 3) -> str:
    if math.isnan(v):
        return "n/a"
    if math.isinf(v):
        return "inf"
    return f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.3g}"


def _columns(grid: list[float], wanted: tuple[float, ...]) -> list[float]:
    """The wanted p that the grid has; else the grid's first five above 0."""
    have = [p for p in wanted if p in grid]
    return have or [p for p in grid if p > 0][:5]


def _at(block: dict[str, Any], p: float) -> float:
    return dict(zip(block["p_grid"], block["values"])).get(p, math.nan)


def markdown(result: ExperimentResult, summary: dict[str, Any], command: str = "") -> str:
    """The report's text."""
    cfg = result.config
    methods = summary["methods"]
    d = summary["data"]
    name = result.name
    noise = 100 * d["n_flipped"] / d["n"]
    head_p = float(round(noise))
    grid = next(iter(methods.values()))["p_grid"]
    cols, cv_cols = _columns(grid, TABLE_P), _columns(grid, CV_TABLE_P)
    lines = [
        f"# {name}: finding flipped labels, {len(result.seeds)} seeds",
        "",
        f"Data: {d['dataset']}, {d['n']} training points, {d['n_flipped']} labels flipped "
        f"({noise:.0f}%). Model: {cfg['model']['arch']} {cfg['model']['hidden']}, "
        f"{cfg['train']['optimizer']} lr {cfg['train']['lr']}, {cfg['train']['epochs']} epochs, "
        f"batch {cfg['train']['batch_size']}. Seeds: {result.seeds}. Methods: "
        f"{', '.join(result.methods)} (f-INE estimator: "
        f"{cfg.get('estimate', {}).get('estimator', 'alg2')}). Projected features (trak, if): k = "
        f"{cfg['collect']['features']['proj_dim']}. Every number is a mean ± standard "
        "deviation over the seeds unless it is a measure across seeds.",
        "",
        f"Made by `{command or 'fine run'}`; runs (signals, influence and ranking files of "
        f"each seed) in {', '.join(f'`{r.directory}`' for r in result.runs)}.",
        "",
        "## Recall of flipped labels (Fig. 6)",
        "",
        f"![recall]({name}-recall.png)",
        "",
        "| method | AUROC | area under recall curve | AUPRC | "
        + " | ".join(f"R@{p:g}%" for p in cols)
        + " |",
        "|---" * (4 + len(cols)) + "|",
    ]
    for m, s in methods.items():
        rec = dict(zip(s["p_grid"], zip(s["recall_mean"], s["recall_sd"], strict=True)))
        cells = [_pm(rec[p]) if p in rec else "n/a" for p in cols]
        lines.append(
            f"| {m} | {_pm(s['auroc'])} | {_pm(s['area'])} | {_pm(s['auprc'])} | "
            + " | ".join(cells)
            + " |"
        )
    lines += [
        "",
        f"Area: mean recall over the p grid (random ranking 0.5, ideal "
        f"{summary['ideal']['area']:.3f}).",
        "",
        "## Consistency across seeds (Fig. 2)",
        "",
        f"![consistency]({name}-consistency.png)",
        "",
        "Mean pairwise Jaccard similarity of the top-p% sets of the seeds' rankings "
        "(1 = the same set every time).",
        "",
        "| method | " + " | ".join(f"J@{p:g}%" for p in cols) + " | paper (Fig. 2) |",
        "|---" * (2 + len(cols)) + "|",
    ]
    for m, s in methods.items():
        paper = PAPER_CONSISTENCY.get(m)
        cells = [_num(_at(s["consistency"], p)) for p in cols]
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {'' if paper is None else paper} |")
    lines += [
        "",
        "## Variability across seeds (Fig. 8)",
        "",
        f"![variability]({name}-variability.png)",
        "",
        "Coefficient of variation of each point's score across seeds (standard deviation / "
        "|mean|), averaged over the top-p% of the points ranked by their mean score "
        "(lower = steadier).",
        "",
        "| method | " + " | ".join(f"CV@{p:g}%" for p in cv_cols) + " |",
        "|---" * (1 + len(cv_cols)) + "|",
    ]
    for m, s in methods.items():
        cells = [_num(_at(s["variability"], p)) for p in cv_cols]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += _time_section(methods)
    lines += _claims_section(methods, head_p)
    return "\n".join(lines) + "\n"


def _time_section(methods: dict[str, Any]) -> list[str]:
    lines = [
        "",
        "## Time per method (seconds)",
        "",
        "| method | training | collection | estimate + rank | total |",
        "|---|---|---|---|---|",
    ]
    for m, s in methods.items():
        t = s["time"]
        cells = [_pm(t[k], 2) for k in ("train", "collect", "estimate", "total")]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Training and collection are charged by what a method reads: f-INE every model "
        "train-collect trained for it and their signals (the main model alone for the "
        "default estimator rb; the auxiliary model too for alg2, auc, std); TracIn and "
        "grad-cos the main model's share of training and collection; loss and margin the "
        "main model's training only; TRAK the models of its ensemble "
        "and their projected gradients; influence functions the main model, its projected "
        "gradients and the Gauss-Newton curvature; confident learning its K fold models "
        "(training and out-of-fold prediction). One process, one thread.",
    ]
    return lines


def _claims_section(methods: dict[str, Any], head_p: float) -> list[str]:
    lines = ["", "## Against the paper's claims", ""]
    fine = methods.get("fine")
    if fine is None:
        return [*lines, "f-INE was not among the methods; nothing to compare."]
    lines += [
        "| claim | paper | here |",
        "|---|---|---|",
    ]
    for base, gain in PAPER_RECALL_GAIN.items():
        if base in methods:
            diff = [
                100 * (a - b)
                for a, b in zip(fine["area_per_seed"], methods[base]["area_per_seed"], strict=True)
            ]
            lines.append(
                f"| f-INE's mean recall minus {base}'s (percentage points) | +{gain} | "
                f"{_pm(mean_sd(diff), 2, signed=True)} |"
            )
    cons = {m: _at(s["consistency"], head_p) for m, s in methods.items()}
    for m, paper in PAPER_CONSISTENCY.items():
        if m in cons:
            lines.append(
                f"| consistency of {m} (Jaccard, top {head_p:g}% here) | {paper} | "
                f"{_num(cons[m])} |"
            )
    finite = {m: v for m, v in cons.items() if math.isfinite(v)}
    if finite:
        best = max(finite, key=lambda m: finite[m])
        lines.append(f"| most consistent method | fine | {best} |")
    cv = {m: _at(s["variability"], head_p) for m, s in methods.items()}
    cv_ok = {m: v for m, v in cv.items() if math.isfinite(v)}
    if cv_ok:
        steadiest = min(cv_ok, key=lambda m: cv_ok[m])
        lines.append(
            f"| lowest variability (CV over the top {head_p:g}%) | fine (vs LESS, LLM data) | "
            f"{steadiest} |"
        )
    return lines
