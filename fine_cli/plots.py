"""PNG figures of evaluation reports, written atomically.

Figures are drawn with matplotlib's object API on an Agg canvas rather than through
pyplot: it needs no display, and importing this module never switches the backend of a
notebook or another program that uses pyplot.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fine_cli.stages.evaluate import RecallReport

if TYPE_CHECKING:
    from fine_cli.stages.distribution import Distribution
    from fine_cli.stages.tradeoff import TradeoffCurve

_DPI = 120
_SIZE_IN = (7.0, 5.0)


def plot_recall(report: RecallReport, path: str | Path) -> Path:
    """Recall vs top-p% of every ranking in ``report`` on one axes, saved as PNG.

    Draws each ranking's recall curve (legend: AUROC and area), the random-ranking
    diagonal and the ideal curve (flipped points first) of each distinct
    (n, flip count, grid). Returns the path written.
    """
    fig = recall_figure(report)
    return save_png(fig, path)


def recall_figure(report: RecallReport) -> Figure:
    """The figure of :func:`plot_recall`, not saved."""
    fig = Figure(figsize=_SIZE_IN, dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for r in report.rankings:
        auroc = "n/a" if math.isnan(r.auroc) else f"{r.auroc:.3f}"
        ax.plot(
            r.p_grid,
            r.recall,
            marker="o",
            markersize=3,
            linewidth=1.8,
            label=f"{r.label}: AUROC {auroc}, area {r.area:.3f}",
        )
    ideals = {(r.n, r.n_flipped, tuple(r.p_grid)): r for r in report.rankings}
    for r in ideals.values():
        rate = f", {100 * r.noise_rate:.0f}% flipped" if len(ideals) > 1 else ""
        ax.plot(
            r.p_grid,
            r.ideal_recall,
            color="black",
            linestyle="--",
            linewidth=1.2,
            label=f"ideal{rate} (area {r.ideal_area:.3f})",
        )
    ax.plot([0, 100], [0, 1], color="gray", linestyle=":", linewidth=1.2, label="random (area 0.5)")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("top p% of the ranking")
    ax.set_ylabel("recall of flipped labels")
    ax.set_title(_title(report))
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize="small")
    fig.tight_layout()
    return fig


def _title(report: RecallReport) -> str:
    sizes = {(r.n, r.n_flipped) for r in report.rankings}
    if len(sizes) == 1:
        n, f = next(iter(sizes))
        return f"Recall of flipped labels in the top-p% (n={n}, {f} flipped)"
    return "Recall of flipped labels in the top-p%"


def save_png(fig: Figure, path: str | Path) -> Path:
    """Write ``fig`` as PNG to ``path`` atomically (no partial file on failure)."""
    from fine_cli.artifacts import atomic_write

    return atomic_write(path, lambda fh: fig.savefig(fh, format="png"))


def plot_tradeoff(curve: TradeoffCurve, path: str | Path, highlight: str | None = None) -> Path:
    """The empirical type-I / type-II curve of one subset, the fitted G_mu curve of every
    estimator (``highlight`` drawn boldest) and the no-influence diagonal, saved as PNG."""
    from fine_cli.stages.tradeoff import gaussian_tradeoff

    fig = Figure(figsize=(5.5, 5.5), dpi=_DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(
        curve.alpha,
        curve.beta,
        color="black",
        marker="o",
        markersize=2.5,
        linewidth=1.6,
        label=f"empirical (N = {curve.n_samples} per side)",
    )
    grid = np.linspace(0.0, 1.0, 401)
    for name, mu in curve.mu.items():
        bold = name == highlight
        ax.plot(
            grid,
            gaussian_tradeoff(grid, mu),
            linewidth=2.2 if bold else 1.2,
            linestyle="-" if bold else "--",
            label=f"G_mu, {name}: mu = {mu:+.2f}",
        )
    ax.plot([0, 1], [1, 0], color="gray", linestyle=":", linewidth=1.0, label="no influence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    ax.set_xlabel("type-I error alpha")
    ax.set_ylabel("type-II error beta")
    who = f"training point {curve.train_index}" if curve.train_index >= 0 else "subset"
    flip = ", flipped" if curve.flipped else ""
    query = "self" if curve.query is None else f"test point {curve.query}"
    ax.set_title(f"Trade-off: {who} (#{curve.subset}{flip}), {query}", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    return save_png(fig, path)


def distribution_figure(dist: Distribution, title: str = "") -> Figure:
    """Fig. 11: histograms of O and O' over the checkpoints, and both against the
    checkpoint, with f-INE's score beside the difference of their means."""
    fig = Figure(figsize=(10.0, 4.2), dpi=_DPI)
    FigureCanvasAgg(fig)
    hist, trace = fig.subplots(1, 2)
    bins = np.histogram_bin_edges(np.concatenate([dist.o, dist.o_prime]), bins=24)
    sides = ((dist.o, "O (with S)", "C3"), (dist.o_prime, "O' (without S)", "C0"))
    for values, name, color in sides:
        label = f"{name}: mean {values.mean():+.3g}"
        hist.hist(values, bins=bins, alpha=0.55, color=color, label=label)
        trace.plot(
            dist.checkpoint, values, marker="o", markersize=2, lw=0.8, color=color, label=name
        )
    fine = ", ".join(f"{k} {v:+.2f}" for k, v in dist.influence.items())
    hist.set_xlabel("test gradient . probe-batch mean gradient")
    hist.set_ylabel("checkpoints")
    hist.set_title(f"f-INE: {fine}", fontsize="small")
    hist.legend(fontsize="small")
    trace.set_xlabel("checkpoint")
    trace.set_title(f"mean O - O' = {float(np.mean(dist.o - dist.o_prime)):+.3g}", fontsize="small")
    trace.legend(fontsize="small")
    for ax in (hist, trace):
        ax.grid(True, alpha=0.3)
    fig.suptitle(title or f"subset {dist.subset}, query {dist.query}", fontsize="medium")
    fig.tight_layout()
    return fig
