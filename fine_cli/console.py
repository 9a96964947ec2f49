"""The one place that prints: messages and progress to stderr, tables and data to stdout."""

from __future__ import annotations

import csv
import io
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

err = Console(stderr=True, highlight=False)


# Messages carry file names, config values and method names: they are printed as plain
# Text, never read as rich markup or emoji codes ("[/]" in a file name is just text).
def info(msg: str) -> None:
    err.print(Text(msg), soft_wrap=True)


def warning(msg: str) -> None:
    err.print(Text("warning: ", style="bold yellow") + Text(msg), soft_wrap=True)


def error(msg: str) -> None:
    err.print(Text("error: ", style="bold red") + Text(msg), soft_wrap=True)


@contextmanager
def epoch_progress(quiet: bool = False, unit: str = "epochs") -> Iterator[Any]:
    """A progress bar over epochs (or ``unit``) with an ETA; yields callback(phase, done, total)."""
    if quiet:
        yield None
        return
    prog = Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=err,
        transient=False,
    )
    task = prog.add_task("training", total=None)
    with prog:

        def update(phase: str, done: int, total: int) -> None:
            prog.update(task, description=phase, completed=done, total=total)

        yield update


def write_text_stdout(text: str) -> None:
    """Write text to stdout; a closed pipe (``| head``) ends quietly."""
    from fine_cli.artifacts import write_stdout

    write_stdout(text.encode())


def ranking_rows(arrays: dict[str, np.ndarray], top: int | None) -> list[dict[str, Any]]:
    k = len(arrays["order"]) if top is None else min(top, len(arrays["order"]))
    return [
        {
            "rank": i + 1,
            "subset": int(arrays["order"][i]),
            "train_index": int(arrays["train_index"][i]),
            "label": int(arrays["label"][i]),
            "score": float(arrays["score"][i]),
            "flipped": bool(arrays["is_flipped"][i]),
            **{c: _cell(arrays[c][i]) for c in RANKING_EXTRAS if c in arrays},
        }
        for i in range(k)
    ]


# Columns a ranking has when its influence file carried them (f-INE statistics).
RANKING_EXTRAS = ("stderr", "pvalue", "pvalue_typical", "qvalue", "selected")


def _cell(v: Any) -> float | bool:
    return bool(v) if isinstance(v, (bool, np.bool_)) else float(v)


def format_ranking(rows: list[dict[str, Any]], fmt: str, title: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=None) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = ["rank", "subset", "train_index", "label", "score", "flipped"]
        fields += [c for c in RANKING_EXTRAS if rows and c in rows[0]]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    table = Table(title=Text(title))
    extras = [c for c in RANKING_EXTRAS if rows and c in rows[0]]
    for col in ("rank", "train_index", "label", "score", *extras, "flipped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["rank"]),
            str(r["train_index"]) if r["train_index"] >= 0 else f"group {r['subset']}",
            str(r["label"]) if r["label"] >= 0 else "-",
            f"{r['score']:.4g}",
            *(("yes" if r[c] else "") if c == "selected" else f"{r[c]:.3g}" for c in extras),
            "yes" if r["flipped"] else "",
        )
    out = Console(file=io.StringIO(), width=100, force_terminal=sys.stdout.isatty())
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]


def fdr_line(fdr: dict[str, Any], n: int) -> str:
    """One sentence on a selection at a false discovery rate (rank's meta["fdr"]): how
    many, against which null, and the estimated share of ordinary (null) subsets."""
    head = f"selected {fdr['selected']} of {n} at FDR {fdr['q']:g}"
    if fdr.get("null", "zero") == "typical":
        what = "log(scores)" if fdr.get("scale_on") == "log" else "scores"
        return (
            f"{head} against the typical null (more influential than a typical subset: "
            f"{what} ~ N({fdr['loc']:.3g}, {fdr['scale']:.3g}^2) fitted to their bulk, "
            f"upper tail); estimated ordinary subsets {100 * fdr['pi0']:.0f}%"
        )
    side = f", {fdr['alternative']} p-values" if fdr.get("alternative") else ""
    text = f"{head} against the zero null (no influence at all: permutation{side}, BH)"
    floor = fdr.get("min_selectable")
    if fdr["selected"] == 0 and floor and floor > 1:
        text += (
            f"; p-values cannot go below 1/(K+1), so BH selects nothing unless at least "
            f"{floor} subsets reach that floor (raise fine estimate --permutations)"
        )
    return text


# Recall columns shown in the table when the grid is long (JSON always has all of them).
TABLE_P = (10.0, 20.0, 30.0, 50.0)


def format_recall(report: Any) -> str:
    """Rich table of a RecallReport: one row per ranking."""
    first = report.rankings[0]
    grid = list(first.p_grid)
    shown = [p for p in grid if p in TABLE_P] if len(grid) > 8 else grid
    shown = shown or grid[:6]
    title = (
        f"recall of flipped points ({first.n_flipped} of {first.n}, "
        f"{100 * first.n_flipped / max(first.n, 1):.0f}%)"
    )
    table = Table(title=title)
    table.add_column("method")
    for col in ("AUROC", "AUPRC", "area"):
        table.add_column(col, justify="right")
    for p in shown:
        table.add_column(f"R@{p:g}%", justify="right")
    for r in report.rankings:
        rec = dict(zip(r.p_grid, r.recall))
        table.add_row(
            Text(r.label),
            f"{r.auroc:.3f}",
            f"{r.auprc:.3f}",
            f"{r.area:.3f}",
            *(f"{rec[p]:.3f}" for p in shown),
        )
    ideal = dict(zip(first.p_grid, first.ideal_recall))
    table.add_row(
        "[dim]ideal[/]",
        "[dim]1.000[/]",
        "[dim]1.000[/]",
        f"[dim]{first.ideal_area:.3f}[/]",
        *(f"[dim]{ideal[p]:.3f}[/]" for p in shown),
    )
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]


def format_validation(report: Any) -> str:
    """Rich table of a ValidateReport: one row per method, means over seeds."""
    t = report.truth
    title = (
        f"against retraining ({report.n_models} models on halves; n={report.n_train}, "
        f"{report.n_flipped} flipped; {len(report.seeds)} seed(s))"
    )
    table = Table(title=title)
    table.add_column("method")
    for col in ("rho mu_true", "rho mu_lira", "rho mean diff", "AUROC"):
        table.add_column(col, justify="right")
    table.add_column(f"Jaccard@{report.jaccard_p:g}%", justify="right")

    def num(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    for m in report.methods:
        s = m.summary()
        table.add_row(
            Text(m.label),
            num(s["spearman_mu"]),
            num(s["spearman_lira"]),
            num(s["spearman_mean_diff"]),
            num(s["auroc"]),
            num(s["jaccard"]),
        )
    table.add_row(
        "[dim]truth mu_true[/]", "[dim]1.000[/]", "", "", f"[dim]{num(t['auroc_mu_true'])}[/]", ""
    )
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    out.print(
        f"truth: {100 * t['share_at_cap']:.1f}% of points at the AUC cap "
        f"(mu_true = {t['mu_true_cap']:.2f}); mean mu_true flipped "
        f"{t['mean_mu_true_flipped']:.2f}, clean {t['mean_mu_true_clean']:.2f}; "
        f"Spearman(mu_true, mu_lira) {t['spearman_mu_true_lira']:.3f}",
        soft_wrap=True,
    )
    if "split_half" in t:
        out.print(
            f"truth's reliability: Spearman {t['split_half']:.3f} between disjoint halves of "
            f"its models, {t['full_m']:.3f} corrected to all {report.n_models}; no score can "
            f"correlate above {t['ceiling']:.3f} with mu_true",
            soft_wrap=True,
        )
    return out.file.getvalue()  # type: ignore[attr-defined]


# Columns of the across-runs tables when the grid is long (JSON always has all of them).
ACROSS_P = (5.0, 10.0, 20.0, 30.0, 50.0, 100.0)


def format_across(report: Any) -> str:
    """Rich table of an AcrossRunsReport (consistency or variability): one row per method."""
    grid = list(report.methods[0].p_grid)
    shown = [p for p in grid if p in ACROSS_P] if len(grid) > 8 else grid
    shown = shown or grid[:6]
    what = "Jaccard of top-p% sets" if report.measure == "consistency" else "mean CV over top-p%"
    table = Table(title=f"{report.measure} across {len(report.run_dirs)} runs ({what})")
    table.add_column("method")
    for p in shown:
        table.add_column(f"{p:g}%", justify="right")
    for m in report.methods:
        table.add_row(Text(m.method), *(_across_cell(m.at(p)) for p in shown))
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]


def _across_cell(v: float) -> str:
    if v != v:
        return "n/a"
    if v in (float("inf"), float("-inf")):
        return "inf"
    return f"{v:.3f}" if abs(v) < 1e4 else f"{v:.3g}"


def format_experiment(summary: dict[str, Any], p: float = 20.0) -> str:
    """Rich table of a `fine run` summary: one row per method, over seeds."""
    seeds = summary["seeds"]
    table = Table(title=Text(f"{summary['name']}: {len(seeds)} seeds {seeds}"))
    table.add_column("method")
    for col in ("AUROC", "recall area", f"Jaccard@{p:g}%", f"CV@{p:g}%", "time (s)"):
        table.add_column(col, justify="right")

    def pm(ms: Any) -> str:
        mean, sd = ms
        return "n/a" if mean != mean else f"{mean:.3f} ± {sd:.3f}"

    for method, s in summary["methods"].items():
        at = {
            key: dict(zip(s[key]["p_grid"], s[key]["values"])).get(p, float("nan"))
            for key in ("consistency", "variability")
        }
        table.add_row(
            Text(method),
            pm(s["auroc"]),
            pm(s["area"]),
            _across_cell(at["consistency"]),
            _across_cell(at["variability"]),
            f"{s['time']['total'][0]:.1f}",
        )
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]


def format_test_validation(report: Any) -> str:
    """Rich table of a TestValidateReport: LDS and Spearman with mu_true per method."""
    t = report.truth
    title = (
        f"test-point attribution against retraining ({report.n_models} models on halves of "
        f"{report.n_groups} groups; {report.n_test} test points; outcome {report.outcome}; "
        f"{len(report.seeds)} seed(s))"
    )
    table = Table(title=title)
    table.add_column("method")
    for col in ("LDS", "rho mu_true", "rho / sqrt(reliability)", "cost (trainings)"):
        table.add_column(col, justify="right")

    def num(v: float | None) -> str:
        return "-" if v is None or v != v else f"{v:.3f}"

    for m in report.methods:
        s = m.summary()
        cost = "-" if s["cost"] != s["cost"] else f"{s['cost']:.1f}"
        table.add_row(Text(m.label), num(s["lds"]), num(s["spearman_mu"]), num(s["relative"]), cost)
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    out.print(
        f"truth: split-half reliability of mu_true {num(t['split_half'])} "
        f"({num(t['full_m'])} at all {report.n_models} models); LDS of a half's mu_true on "
        f"the other half's models {num(t['lds_of_half_truth'])}",
        soft_wrap=True,
    )
    return out.file.getvalue()  # type: ignore[attr-defined]


def format_inspect(d: dict[str, Any]) -> str:
    """Rich tables of ``fine inspect`` (fine_cli/stages/inspect.py): what the file is and
    what made it, then its arrays."""
    table = Table(title=Text(f"{d['path']}: {d['kind']} file"), show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value")

    def row(name: str, value: Any) -> None:
        if value not in (None, {}, []):
            text = value if isinstance(value, str) else json.dumps(value, default=str)
            table.add_row(name, Text(text))

    row("schema", f"{d['kind']} version {d['schema_version']}")
    row("valid", "yes" if d["valid"] else f"no: {d['problem']}")
    row("sha256", d["sha256"])
    if d["input"]:
        checked = f" (matches '{d['input']['checked']}')" if d["input"].get("checked") else ""
        row("input", f"{d['input']['key']} {d['input']['sha256']}{checked}")
    for key in ("method", "estimator", "mode", "dataset", "query"):
        row(key, d["meta"].get(key))
    row("seeds", d["seeds"])
    for key, value in d["config_changes"].items():
        row(f"config {key}", value)
    row("versions", d["versions"])
    row("runtime", d["runtime"])
    row("timing", d["timing"])
    for text in d["warnings"] or []:
        row("warning", text)
    arrays = Table(title="arrays")
    for col in ("name", "shape", "dtype"):
        arrays.add_column(col, justify="left" if col == "name" else "right")
    for a in d["arrays"]:
        arrays.add_row(Text(a["name"]), str(tuple(a["shape"])), a["dtype"])
    out = Console(file=io.StringIO(), width=120, force_terminal=sys.stdout.isatty())
    out.print(table)
    out.print(arrays)
    return out.file.getvalue()  # type: ignore[attr-defined]
