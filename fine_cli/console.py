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

err = Console(stderr=True, highlight=False)


def info(msg: str) -> None:
    err.print(msg, soft_wrap=True)


def error(msg: str) -> None:
    err.print(f"[bold red]error:[/] {msg}", soft_wrap=True)


@contextmanager
def epoch_progress(quiet: bool = False) -> Iterator[Any]:
    """A progress bar over epochs with an ETA; yields a callback(phase, done, total)."""
    if quiet:
        yield None
        return
    prog = Progress(
        TextColumn("[bold]{task.description:<11}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("epochs"),
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
        }
        for i in range(k)
    ]


def format_ranking(rows: list[dict[str, Any]], fmt: str, title: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=None) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = ["rank", "subset", "train_index", "label", "score", "flipped"]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    table = Table(title=title)
    for col in ("rank", "train_index", "label", "score", "flipped"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(
            str(r["rank"]),
            str(r["train_index"]) if r["train_index"] >= 0 else f"group {r['subset']}",
            str(r["label"]) if r["label"] >= 0 else "-",
            f"{r['score']:.4g}",
            "yes" if r["flipped"] else "",
        )
    out = Console(file=io.StringIO(), width=100, force_terminal=sys.stdout.isatty())
    out.print(table)
    return out.file.getvalue()  # type: ignore[attr-defined]


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
            r.label,
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
