"""Spearman / AUROC of variance-reduced f-INE and TracIn for every window of the first K
checkpoints, and for the window that the held-out loss chooses (docs/statistics.md).

    python scripts/statistics/vr_window.py TRUTH.npz SIG_s0.npz EXT_s0.npz SIG_s1.npz ...
"""

from __future__ import annotations

import sys

import numpy as np
from vr_variants import TINY, parts, rb_paired, rb_stouffer, tracin

from fine_cli import metrics
from fine_cli.artifacts import load_artifact
from fine_cli.estimators.view import signal_view
from fine_cli.stages.validate import spearman


def kappa_paired(p: dict, w: slice) -> np.ndarray:
    """rb_paired with v_c replaced by kappa_c s_c, kappa_c one number per checkpoint (the
    median over points of v_c / s_c): can a global scale stand in for the Gram moments?"""
    kappa = np.median(p["v"] / np.maximum(p["s"], TINY), axis=1, keepdims=True)
    q = dict(p, v=kappa * p["s"])
    return rb_paired(q, w)


def main() -> None:
    truth = load_artifact(sys.argv[1], "truth")
    mu, flip = truth["mu_true"], truth["flip_mask"]
    files = sys.argv[2:]
    runs = []
    for sp, ep in zip(files[::2], files[1::2]):
        runs.append((signal_view(load_artifact(sp, "signals")), dict(np.load(ep))))
    c = runs[0][0].n_checkpoints
    fns = {
        "rb_paired": rb_paired,
        "rb_stouffer": rb_stouffer,
        "kappa_paired": kappa_paired,
        "tracin": tracin,
    }
    ps = [parts(sig, ext, "probe") for sig, ext in runs]
    autos = [int(np.argmin(ext["test_loss"])) + 1 for _, ext in runs]
    print("held-out loss minimum at checkpoint", autos)
    ks = sorted({*range(1, min(c, 12) + 1), *range(15, c + 1, 5), c})
    print("K   " + "  ".join(f"{n:>19s}" for n in fns))
    for k in [*ks, "auto"]:
        cells = []
        for fn in fns.values():
            rho, au = [], []
            for p, a in zip(ps, autos):
                w = slice(0, a if k == "auto" else k)
                s = fn(p, w)
                rho.append(spearman(s, mu))
                au.append(metrics.auroc(s, flip))
            cells.append(f"{np.mean(rho):.3f}±{np.std(rho, ddof=1):.3f}/{np.mean(au):.3f}")
        print(f"{k!s:4s}" + "  ".join(f"{x:>19s}" for x in cells), flush=True)


if __name__ == "__main__":
    main()
