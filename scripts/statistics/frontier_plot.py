"""docs/statistics-frontier.png: cost against Spearman with the truth and against detection
AUROC, one row per setting, from frontier.py's JSON tables.

    python scripts/statistics/frontier_plot.py OUT.png "30 epochs" A.json "100 epochs" B.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# One colour per family of methods; variants of a family share it with another marker.
FAMILY = {
    "fine/rb": "tab:red",
    "fine/paired": "tab:orange",
    "fine/alg2": "tab:brown",
    "tracin": "tab:blue",
    "trak": "tab:green",
    "influence": "tab:olive",
    "confident": "tab:purple",
    "loss": "tab:gray",
    "margin": "tab:gray",
}
SHOWN = (
    "fine/rb (default)",
    "fine/paired (R = 1, all checkpoints)",
    "fine/alg2 (the paper's: aux model, R = 1, all checkpoints)",
    "tracin (all checkpoints)",
    "tracin (auto window)",
    "trak (2 models)",
    "trak (8 models)",
    "influence functions",
    "confident (K = 5 folds)",
    "loss",
)
MARKERS = "osD^v<>pXh"


def colour(method: str) -> str:
    return next((c for k, c in FAMILY.items() if method.startswith(k)), "k")


def frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The points that no cheaper point beats: the cost-quality frontier, by cost."""
    out: list[tuple[float, float]] = []
    for cost, q in sorted(points):
        if not out or q > out[-1][1]:
            out.append((cost, q))
    return out


def main() -> None:
    out, pairs = sys.argv[1], sys.argv[2:]
    settings = list(zip(pairs[::2], pairs[1::2]))
    fig = Figure(figsize=(11, 4.2 * len(settings) + 1.2), dpi=110)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(settings), 2, squeeze=False)
    for row, (title, path) in enumerate(settings):
        table = [t for t in json.load(open(path)) if t["method"] in SHOWN]
        runs = max(t["epochs"] for t in table)
        for col, (key, label) in enumerate(
            (("spearman", "Spearman with mu_true"), ("auroc", "detection AUROC"))
        ):
            ax = axes[row][col]
            for i, method in enumerate(SHOWN):
                pts = sorted(
                    (t["cost"] / runs, t[key], t[f"{key}_sd"])
                    for t in table
                    if t["method"] == method
                )
                if not pts:
                    continue
                x, y, sd = (np.array(v) for v in zip(*pts))
                ax.errorbar(
                    x,
                    y,
                    yerr=sd,
                    marker=MARKERS[i % len(MARKERS)],
                    ms=5,
                    color=colour(method),
                    label=method,
                    lw=1,
                    capsize=2,
                )
            front = frontier([(t["cost"] / runs, t[key]) for t in table])
            fx, fy = zip(*front)
            ax.step(fx, fy, where="post", color="k", lw=0.8, ls=":", label="frontier")
            ax.set_xscale("log")
            ax.axvline(1.5, color="k", lw=0.6, ls="--")
            ax.set(
                xlabel=f"total compute, runs of one model ({runs} epochs)",
                ylabel=label,
                title=f"{title}: {label}",
            )
            if key == "auroc":
                ax.set_ylim(0.84, 1.0)
            else:
                ax.set_ylim(0.4, 0.92)
            ax.grid(True, alpha=0.3, which="both")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=4, fontsize="small")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(out)
    print(out)


if __name__ == "__main__":
    main()
