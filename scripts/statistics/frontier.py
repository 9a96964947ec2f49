"""The cost-quality frontier of docs/statistics.md (section 8): every method at several
training lengths, total compute (trainings + collection + scoring, in epochs of one model on
the whole training set) against Spearman with the retraining truth, detection AUROC and
Jaccard@20% across seeds.

    python scripts/statistics/frontier.py TRUTH.npz OUT_PREFIX --lengths 1 2 5 10 30 \
        --prod runs/i11/prod/sig100-s{0,1,2}.npz --paper runs/i11/sig100-s{0,1,2}.npz \
        --front runs/i11/front --units runs/i11/cost_units.json

Sources (one training per model serves every length, see frontier_collect.py):
- ``--prod``: `fine train-collect` with the defaults (main model alone, rb's moments,
  held-out loss) and ``collect.patience=null``, so that the first E checkpoints are an
  E-epoch run; the default's own collection stop (patience 5) is replayed on them;
- ``--paper``: signals with the auxiliary model (Algorithm 1 whole), for alg2;
- ``--front``: TRAK / influence functions (trak-s*.npz) and confident learning (cl-s*.npz);
- ``--units``: cost_units.py's seconds per piece of work in training epochs.
"""

from __future__ import annotations

import argparse
import glob
import json
import time
from collections.abc import Callable

import numpy as np

from fine_cli import metrics
from fine_cli.artifacts import load_artifact
from fine_cli.estimators.fine import influence_alg2, influence_paired, influence_rb
from fine_cli.estimators.samples import (
    MAIN,
    auto_window,
    first_checkpoints,
    self_moments,
    self_samples,
)
from fine_cli.estimators.view import signal_view
from fine_cli.stages.validate import spearman

PATIENCE = 5  # the default collect.patience
FOLDS = 5  # confident learning's K


def collected(heldout: np.ndarray, patience: int = PATIENCE) -> int:
    """How many checkpoints the default collects: it stops once the held-out loss has not
    improved for ``patience`` checkpoints (fine_cli.collector.Collector.stopped)."""
    for c in range(len(heldout)):
        if c - int(np.argmin(heldout[: c + 1])) >= patience:
            return c + 1
    return len(heldout)


class Row:
    def __init__(self, method: str, length: int, cost: float, scores: list[np.ndarray]):
        self.method, self.length, self.cost, self.scores = method, length, cost, scores


def evaluate(rows: list[Row], mu: np.ndarray, flip: np.ndarray) -> list[dict]:
    out = []
    for r in rows:
        rho = [spearman(s, mu) for s in r.scores]
        au = [metrics.auroc(s, flip) for s in r.scores]
        ranks = [np.argsort(-s, kind="stable") for s in r.scores]
        jac = metrics.jaccard_consistency(ranks, 20) if len(ranks) > 1 else float("nan")
        out.append(
            {
                "method": r.method,
                "epochs": r.length,
                "cost": r.cost,
                "seeds": len(r.scores),
                "spearman": float(np.mean(rho)),
                "spearman_sd": float(np.std(rho, ddof=1)) if len(rho) > 1 else 0.0,
                "auroc": float(np.mean(au)),
                "auroc_sd": float(np.std(au, ddof=1)) if len(au) > 1 else 0.0,
                "jaccard20": float(jac),
            }
        )
    return out


def scoring_epochs(fn: Callable[[], np.ndarray], epoch_s: float) -> tuple[np.ndarray, float]:
    t0 = time.perf_counter()
    s = fn()
    return s, (time.perf_counter() - t0) / epoch_s


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("truth")
    ap.add_argument("out")
    ap.add_argument("--lengths", type=int, nargs="+", required=True)
    ap.add_argument("--prod", nargs="+", required=True)
    ap.add_argument("--paper", nargs="+", default=[])
    ap.add_argument("--front", required=True)
    ap.add_argument("--units", required=True)
    args = ap.parse_args()
    truth = load_artifact(args.truth, "truth")
    mu, flip = truth["mu_true"], truth["flip_mask"].astype(bool)
    units = json.load(open(args.units))
    u, epoch_s = units["epochs"], units["seconds"]["epoch"]
    prod = [signal_view(load_artifact(p, "signals")) for p in args.prod]
    paper = [signal_view(load_artifact(p, "signals")) for p in args.paper]
    rows: list[Row] = []
    for e in args.lengths:
        runs = [first_checkpoints(s, e) for s in prod]
        # the default: rb, collection stopped by patience, window up to the held-out minimum
        scores, costs, t_costs = [], [], []
        for s in runs:
            assert s.heldout_loss is not None
            c = collected(s.heldout_loss)
            w = auto_window(s.heldout_loss[:c])
            cut = first_checkpoints(s, w)
            sc, est = scoring_epochs(lambda cut=cut: influence_rb(*self_moments(cut)), epoch_s)
            scores.append(sc)
            costs.append(e + c * u["checkpoint_rb"] + est)
            lr = cut.lr.astype(np.float64)
            tr = np.einsum("c,cn->n", lr, cut.sqnorm[MAIN].astype(np.float64))
            scores_t = tr
            t_costs.append((c, scores_t))
        rows.append(Row("fine/rb (default)", e, float(np.mean(costs)), scores))
        # TracIn over the same window: the sqnorm pass and the held-out loss per checkpoint
        rows.append(
            Row(
                "tracin (auto window)",
                e,
                float(np.mean([e + c * (u["sqnorm_pass"] + u["forward"] / 4) for c, _ in t_costs])),
                [t for _, t in t_costs],
            )
        )
        rows.append(
            Row(
                "tracin (all checkpoints)",
                e,
                e + e * u["sqnorm_pass"],
                [np.einsum("c,cn->n", s.lr, s.sqnorm[MAIN].astype(np.float64)) for s in runs],
            )
        )
        if e < 3:  # paired and alg2 need a few samples; skipped for the shortest runs
            pass
        else:
            rows.append(
                Row(
                    "fine/paired (R = 1, all checkpoints)",
                    e,
                    e + e * u["checkpoint_probes"],
                    [influence_paired(*self_samples(s)) for s in runs],
                )
            )
        rows.append(
            Row("loss", e, e + u["forward"], [s.loss[MAIN, -1].astype(np.float64) for s in runs])
        )
        rows.append(
            Row(
                "margin",
                e,
                e + u["forward"],
                [-s.margin[MAIN, -1].astype(np.float64) for s in runs],
            )
        )
        if paper and e >= 3:
            cut_p = [first_checkpoints(s, e) for s in paper]
            rows.append(
                Row(
                    "fine/alg2 (the paper's: aux model, R = 1, all checkpoints)",
                    e,
                    2 * e + 2 * e * u["checkpoint_probes"],
                    [influence_alg2(*self_samples(s)) for s in cut_p],
                )
            )
        trak = sorted(glob.glob(f"{args.front}/trak-s*.npz"))
        feats = [np.load(f) for f in trak]
        for k in (2, 8):
            have = [f for f in feats if f"trak{k}@{e}" in f]
            if have:
                rows.append(
                    Row(
                        f"trak ({k} models)",
                        e,
                        k * e + k * u["trak_features_per_model"],
                        [f[f"trak{k}@{e}"] for f in have],
                    )
                )
        have = [f for f in feats if f"if@{e}" in f]
        if have:
            rows.append(
                Row(
                    "influence functions",
                    e,
                    e + u["trak_features_per_model"] + u["ggn"],
                    [f[f"if@{e}"] for f in have],
                )
            )
    cl = [np.load(f) for f in sorted(glob.glob(f"{args.front}/cl-s*.npz"))]
    for key in sorted({k for f in cl for k in f if k.startswith("confident-")}):
        method, e = key.split("@")
        quality = method.removeprefix("confident-")
        label = "confident" if quality == "self_confidence" else f"confident ({quality})"
        rows.append(
            Row(
                f"{label} (K = {FOLDS} folds)",
                int(e),
                (FOLDS - 1) * int(e) + u["forward"],
                [f[key] for f in cl],
            )
        )
    table = evaluate(rows, mu, flip)
    with open(f"{args.out}.json", "w") as f:
        json.dump(table, f, indent=1)
    lines = [
        "| method | epochs | cost (epochs) | runs of one model | Spearman mu_true | AUROC | "
        "Jaccard@20% |",
        "|---|---|---|---|---|---|---|",
    ]
    main_len = max(args.lengths)
    for t in sorted(table, key=lambda t: (t["method"], t["epochs"])):
        lines.append(
            f"| {t['method']} | {t['epochs']} | {t['cost']:.1f} | {t['cost'] / main_len:.2f} | "
            f"{t['spearman']:.3f} ± {t['spearman_sd']:.3f} | {t['auroc']:.3f} ± "
            f"{t['auroc_sd']:.3f} | {t['jaccard20']:.3f} |"
        )
    with open(f"{args.out}.md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
