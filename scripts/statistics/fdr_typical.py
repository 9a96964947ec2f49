"""Calibration of `fine rank --fdr` (docs/statistics.md, section 8): realised false
discovery proportion against q, per null and selection rule, on quickstart runs with
known mislabels and on synthetic signals; a markdown table and docs/statistics-fdr.png.

Input, in each RUNS directory (default runs/fdr_rb), per label-noise rate R and seed S:
  sig-R-S.npz    fine train-collect configs/quickstart.yaml --set seed=S --set data.label_noise=R
  inf-R-S.npz    fine estimate sig-R-S.npz --permutations 999  (rb, B = 200; K for the zero null)
  truth-R.npz    fine validate ... --set data.label_noise=R --save-truth truth-R.npz
The flipped points are the true discoveries. A clean point whose retraining mu_true is
at least the median mu_true of the flipped points (the AUC cap on these runs) is
ambiguous: counted apart, neither true nor false ("fdp"; "strict" counts it false).
The default rule fits the typical null on the scale calibrated for the estimator that
made the influence file (fine_cli/stages/rank.py, TYPICAL_SCALE).

  python scripts/statistics/fdr_typical.py [RUNS ...] [--plot docs/statistics-fdr.png]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np
from scipy import stats

from fine_cli import selection
from fine_cli.estimators import null
from fine_cli.estimators.fine import ESTIMATOR_FNS, influence_rb
from fine_cli.estimators.fine_method import _rb_bootstrap_se
from fine_cli.stages.rank import TYPICAL_SCALE

NOISE = ("0.0", "0.05", "0.2", "0.4")
SEEDS = (0, 1, 2)
Q_TABLE = (0.01, 0.05, 0.1)
Q_PLOT = (0.01, 0.02, 0.05, 0.1, 0.2)
SYNTH_REPS = 20

# A rule: (scores, stderr, pvalue, signals path, the estimator's scale) -> q-values (G,);
# select q-value <= q.
Rule = Callable[[np.ndarray, np.ndarray, np.ndarray, Path, str], np.ndarray]


def _typical(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    return selection.select(x, 0.5, stderr=se, on=on).qvalue  # the default


def _linear(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    return selection.select(x, 0.5, stderr=se, on="linear").qvalue


def _log(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    return selection.select(x, 0.5, stderr=se, on="log").qvalue


def _typical_bh(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    fit = selection.fit_typical_null(x, se, on)
    return selection.storey_qvalues(selection.typical_pvalues(x, fit), 1.0)


def _cm_only(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    return selection.select(x, 0.5, on=on).qvalue  # Efron's central matching without the floor


def _zero(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    return selection.storey_qvalues(p, 1.0)


def _mixture(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    """Two-group normal mixture; local fdr = posterior of the lower component; the
    q-value of a point is the mean local fdr of the points up to its own."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(2, random_state=0).fit(x[:, None])
    lfdr = gm.predict_proba(x[:, None])[:, int(np.argmin(gm.means_[:, 0]))]
    order = np.argsort(lfdr, kind="stable")
    running = np.cumsum(lfdr[order]) / np.arange(1, x.size + 1)
    qv = np.empty_like(lfdr)
    qv[order] = np.minimum.accumulate(running[::-1])[::-1]
    return qv


def _reference(x: np.ndarray, se: np.ndarray, p: np.ndarray, sig: Path, on: str) -> np.ndarray:
    """A paired test of each point's contrasts against the per-checkpoint median contrast
    of all points (one-sided t-test), BH."""
    from fine_cli.artifacts import load_signals
    from fine_cli.estimators.samples import self_samples
    from fine_cli.estimators.view import signal_view

    xs, ys = self_samples(signal_view(load_signals(str(sig))))
    e = (xs - ys) - np.median(xs - ys, axis=0, keepdims=True)
    t = e.mean(axis=1) / (e.std(axis=1, ddof=1) / np.sqrt(e.shape[1]))
    return selection.storey_qvalues(stats.t.sf(t, e.shape[1] - 1), 1.0)


RULES: dict[str, Rule] = {
    "typical (default)": _typical,
    "typical, linear scale": _linear,
    "typical, log scale": _log,
    "typical, plain BH": _typical_bh,
    "central matching, no floor": _cm_only,
    "two-group mixture": _mixture,
    "reference set, paired t": _reference,
    "zero (permutation, BH)": _zero,
}


def real_rows(runs: Path) -> dict[tuple[str, str], np.ndarray]:
    """(setting, rule) -> (seeds, q, 4): selected, fdp, strict fdp, recall; the setting
    names the estimator and the noise rate."""
    from fine_cli.artifacts import load_artifact

    out: dict[tuple[str, str], list[np.ndarray]] = {}
    for r in NOISE:
        mu = np.load(runs / f"truth-{r}.npz")["mu_true"]
        for s in SEEDS:
            inf = load_artifact(str(runs / f"inf-{r}-{s}.npz"), "influence")
            x, se = inf["scores"][0], inf["stderr"][0]
            p = inf["pvalue"][0] if "pvalue" in inf else np.ones_like(x)  # zero null: none
            estimator = str(inf.meta.get("estimator"))
            flip = inf["flip_mask"].astype(bool)
            amb = (~flip) & (mu >= np.median(mu[flip])) if flip.any() else np.zeros_like(flip)
            for name, rule in RULES.items():
                qv = rule(x, se, p, runs / f"sig-{r}-{s}.npz", TYPICAL_SCALE[estimator])
                key = (f"{estimator}, label noise {r}", name)
                out.setdefault(key, []).append(_measure(qv, flip, amb, Q_PLOT))
    return {k: np.stack(v) for k, v in out.items()}


def _measure(qv: np.ndarray, alt: np.ndarray, amb: np.ndarray, qs: tuple) -> np.ndarray:
    rows = []
    for q in qs:
        sel = qv <= q
        n = max(int(sel.sum()), 1)
        rows.append(
            (
                sel.sum(),
                (sel & ~alt & ~amb).sum() / n,
                (sel & ~alt).sum() / n,
                (sel & alt).sum() / max(int(alt.sum()), 1),
            )
        )
    return np.array(rows, dtype=np.float64)


def synthetic(frac: float, rng: np.random.Generator, g: int = 2000, n: int = 30) -> tuple:
    """Paired scores, bootstrap se, permutation p and the atypical mask of samples where
    every subset has an effect theta ~ N(0.3, 0.1^2) and a share ``frac`` theta + 1;
    early checkpoints dominate the contrasts, as in training."""
    w = 3.0 * np.exp(-np.arange(n) / 6.0) + 0.3
    alt = rng.random(g) < frac
    theta = rng.normal(0.3, 0.1, g) + 1.0 * alt
    y = rng.normal(size=(g, n)) + np.linspace(3, 0, n)
    x = y + w * (theta[:, None] + rng.uniform(0.5, 2.0, (g, 1)) * rng.normal(size=(g, n)))
    fn = ESTIMATOR_FNS["paired"]
    s = fn(x, y, 1)
    se = null.bootstrap_se(x, y, fn, 1, null.bootstrap_columns(n, 1, 200, rng))
    p = null.permutation_pvalues(
        s, null.permutation_null(x, y, fn, 1, null.swap_masks(n, 999, rng)), "two-sided"
    )
    return s, se, p, alt


def synthetic_rb(frac: float, rng: np.random.Generator, g: int = 2000, c: int = 10) -> tuple:
    """rb scores, their bootstrap se and the atypical mask from per-checkpoint moments
    where each subset's scale a (its gradient norm) is log-normal, sd 0.6, and a share
    ``frac`` has 6 times the typical scale: m_c = a^2 w_c (1 + 0.3 eps), v_c = 40 a^2 w_c,
    early checkpoints weighing most, as in training."""
    w = np.exp(-np.arange(c) / 4.0) + 0.2
    alt = rng.random(g) < frac
    a = rng.lognormal(0.0, 0.6, g) * np.where(alt, 6.0, 1.0)
    m = a[:, None] ** 2 * w * (1.0 + 0.3 * rng.normal(size=(g, c)))
    v = 40.0 * a[:, None] ** 2 * w
    se = _rb_bootstrap_se(m, v, null.bootstrap_columns(c, 1, 200, rng))
    return influence_rb(m, v), se, alt


def synthetic_rows() -> dict[tuple[str, str], np.ndarray]:
    out: dict[tuple[str, str], list[np.ndarray]] = {}
    rng = np.random.default_rng(0)
    for frac in (0.0, 0.05, 0.2, 0.4):
        for _ in range(SYNTH_REPS):
            s, se, p, alt = synthetic(frac, rng)
            for name in ("typical (default)", "zero (permutation, BH)"):
                qv = RULES[name](s, se, p, Path(), TYPICAL_SCALE["paired"])
                out.setdefault((f"synthetic paired, {frac:g} atypical", name), []).append(
                    _measure(qv, alt, np.zeros_like(alt), Q_PLOT)
                )
            s, se, alt = synthetic_rb(frac, rng)
            for name in ("typical (default)", "typical, linear scale"):
                qv = RULES[name](s, se, np.ones_like(s), Path(), TYPICAL_SCALE["rb"])
                out.setdefault((f"synthetic rb, {frac:g} atypical", name), []).append(
                    _measure(qv, alt, np.zeros_like(alt), Q_PLOT)
                )
    return {k: np.stack(v) for k, v in out.items()}


def table(rows: dict[tuple[str, str], np.ndarray], names: list[str], qs: tuple) -> str:
    head = "| setting | null / rule | " + " | ".join(
        f"q={q:g}: selected / FDP (+-sd) / strict / recall" for q in qs
    )
    lines = [head + " |", "|---|---|" + "---|" * len(qs)]
    for (setting, name), a in rows.items():
        if name not in names:
            continue
        cells = []
        for q in qs:
            i = Q_PLOT.index(q)
            m, sd = a[:, i].mean(axis=0), a[:, i].std(axis=0, ddof=1)
            cells.append(f"{m[0]:.0f} / {m[1]:.3f} +- {sd[1]:.3f} / {m[2]:.3f} / {m[3]:.2f}")
        lines.append(f"| {setting} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(rows: dict[tuple[str, str], np.ndarray], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # (title, rule, the setting's prefix)
    panels = (
        ("typical null (default), rb (default estimator)", "typical (default)", "rb,"),
        ("typical null (default), paired over all checkpoints", "typical (default)", "paired,"),
        ("typical null (default): synthetic signals", "typical (default)", "synthetic"),
        ("zero null (--null zero), rb runs", "zero (permutation, BH)", "rb,"),
    )
    fig, axes = plt.subplots(1, len(panels), figsize=(20, 4.6))
    for ax, (title, name, prefix) in zip(axes, panels):
        for (setting, rule), a in rows.items():
            if rule != name or not setting.startswith(prefix):
                continue
            m, sd = a[:, :, 1].mean(axis=0), a[:, :, 1].std(axis=0, ddof=1)
            ax.errorbar(Q_PLOT, m, yerr=2 * sd, marker="o", capsize=3, alpha=0.8, label=setting)
        ax.plot(Q_PLOT, Q_PLOT, "k--", lw=1, label="FDP = q")
        ax.set_xscale("log")
        ax.set_xticks(Q_PLOT, [f"{q:g}" for q in Q_PLOT])
        ax.set_xlabel("q")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(-0.02, 1.02 if "zero" in name else 0.4)
        ax.legend(fontsize=7, loc="upper left")
    axes[0].set_ylabel("realised FDP, mean +- 2 sd over seeds / reps")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="*", default=["runs/fdr_rb"])
    ap.add_argument("--plot", default="docs/statistics-fdr.png")
    args = ap.parse_args()
    rows: dict[tuple[str, str], np.ndarray] = {}
    for runs in args.runs:
        rows.update(real_rows(Path(runs)))
    rows.update(synthetic_rows())
    print(table(rows, ["typical (default)"], Q_TABLE), end="\n\n")
    print(table(rows, list(RULES), (0.05, 0.1)), end="\n\n")
    for (setting, name), a in rows.items():
        if name != "typical (default)" or setting.startswith("synthetic"):
            continue
        print(
            f"{setting}, default, per seed: "
            + "; ".join(
                f"q={q:g}: selected {a[:, Q_PLOT.index(q), 0].astype(int).tolist()}, "
                f"flipped {(1 - a[:, Q_PLOT.index(q), 2]).round(3).tolist()}, "
                f"recall {a[:, Q_PLOT.index(q), 3].round(3).tolist()}"
                for q in Q_TABLE
            )
        )
    plot(rows, args.plot)


if __name__ == "__main__":
    main()
