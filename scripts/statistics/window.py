"""rb (the default) and TracIn over the first K checkpoints, for every K, and over the
window that the held-out loss chooses (--checkpoints auto), against the retraining truth:
Spearman (mean ± sd over seeds) / AUROC / Jaccard@20% (docs/statistics.md, section 3c).

    python scripts/statistics/window.py TRUTH.npz SIG_s0.npz SIG_s1.npz ... [--max C]
"""

from __future__ import annotations

import argparse

import numpy as np

from fine_cli import metrics
from fine_cli.artifacts import load_artifact
from fine_cli.estimators.fine import influence_rb
from fine_cli.estimators.samples import MAIN, auto_window, first_checkpoints, self_moments
from fine_cli.estimators.view import signal_view
from fine_cli.stages.validate import spearman


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("truth")
    ap.add_argument("signals", nargs="+")
    ap.add_argument("--max", type=int, default=None, help="the run's length (first C only)")
    args = ap.parse_args()
    truth = load_artifact(args.truth, "truth")
    mu, flip = truth["mu_true"], truth["flip_mask"]
    sigs = [signal_view(load_artifact(p, "signals")) for p in args.signals]
    if args.max:
        sigs = [first_checkpoints(s, args.max) for s in sigs]
    c = sigs[0].n_checkpoints
    autos = [auto_window(s.heldout_loss) for s in sigs]
    moments = [self_moments(s) for s in sigs]
    print(f"held-out loss minimum at checkpoint {autos} of {c}")
    ks = sorted({1, 2, 3, 4, 5, 6, 7, 8, 10, 12, 15, 20, 30, 50, 100, c} & set(range(1, c + 1)))
    print(f"{'K':>5s}  {'rb':>25s}  {'tracin':>25s}")
    for k in [*ks, "auto"]:
        cells = []
        for name in ("rb", "tracin"):
            scores = []
            for s, (m, v), a in zip(sigs, moments, autos):
                w = a if k == "auto" else int(k)
                if name == "rb":
                    scores.append(influence_rb(m[:, :w], v[:, :w]))
                else:
                    lr = s.lr[:w].astype(np.float64)
                    scores.append(np.einsum("c,cn->n", lr, s.sqnorm[MAIN, :w].astype(np.float64)))
            rho = [spearman(x, mu) for x in scores]
            au = [metrics.auroc(x, flip) for x in scores]
            jac = metrics.jaccard_consistency([np.argsort(-x, kind="stable") for x in scores], 20)
            cells.append(
                f"{np.mean(rho):.3f}±{np.std(rho, ddof=1):.3f}/{np.mean(au):.3f}/{jac:.3f}"
            )
        print(f"{k!s:>5s}  {cells[0]:>25s}  {cells[1]:>25s}", flush=True)


if __name__ == "__main__":
    main()
