"""FDR calibration of the permutation p-values on real null signals (self_null_samples) and
on a mixture of null and real with-S signals.

    python scripts/statistics/calibration.py K ESTIMATOR[,ESTIMATOR...] SIGNALS...
"""

import sys

import numpy as np
from scipy import stats

from fine_cli.artifacts import load_artifact
from fine_cli.estimators import null
from fine_cli.estimators.fine import ESTIMATOR_FNS
from fine_cli.estimators.samples import self_null_samples, self_samples
from fine_cli.estimators.view import signal_view as signals_view

K = int(sys.argv[1])
Q = 0.05
NAMES = sys.argv[2].split(",")
print(f"K={K} swaps, q={Q}, two-sided; per estimator: mean over seeds")
print(f"R={signals_view(load_artifact(sys.argv[3], 'signals')).n_repeats}")
HEAD = ("estimator", "KS D", "P(p<.05)", "null sel", "|", "mix sel", "FDP", "power")
print(" ".join(HEAD))
for name in NAMES:
    fn = ESTIMATOR_FNS[name]
    rows = []
    for i, path in enumerate(sys.argv[3:]):
        sig = signals_view(load_artifact(path, "signals"))
        r = sig.n_repeats
        xn, yn = self_null_samples(sig)
        x, y = self_samples(sig)
        swaps = null.swap_masks(xn.shape[1], K, np.random.default_rng([2, i]))
        pn = null.permutation_pvalues(
            fn(xn, yn, r), null.permutation_null(xn, yn, fn, r, swaps), "two-sided"
        )
        ks = stats.kstest(pn, "uniform").statistic
        sel_null = null.benjamini_hochberg(pn, Q)[0].sum()
        real = np.random.default_rng([3, i]).random(x.shape[0]) < 0.2
        xm, ym = np.where(real[:, None], x, xn), np.where(real[:, None], y, yn)
        pm = null.permutation_pvalues(
            fn(xm, ym, r), null.permutation_null(xm, ym, fn, r, swaps), "two-sided"
        )
        sel = null.benjamini_hochberg(pm, Q)[0]
        fdp = (sel & ~real).sum() / max(sel.sum(), 1)
        rows.append(
            (ks, np.mean(pn < 0.05), sel_null, sel.sum(), fdp, (sel & real).sum() / real.sum())
        )
    m = np.mean(rows, axis=0)
    print(
        f"{name:9s} {m[0]:6.3f} {m[1]:8.3f} {m[2]:8.1f} | {m[3]:7.1f} {m[4]:6.3f} {m[5]:6.3f}",
        flush=True,
    )
