"""BH at q = 0.05 on the default estimator's p-values, all training points (seed 0)."""

import sys

import numpy as np

from fine_cli.artifacts import load_artifact
from fine_cli.estimators import null
from fine_cli.stages import estimate

t = load_artifact(sys.argv[1], "truth")
mu = t["mu_true"]
for p in sys.argv[2:]:
    arr, meta = estimate.run(
        load_artifact(p, "signals"), "fine", estimate.EstimateOptions(bootstrap=0)
    )
    sel, _ = null.benjamini_hochberg(arr["pvalue"][0], 0.05)
    f = arr["flip_mask"]
    print(
        f"{p}: {meta['estimator']}, selected {sel.sum()} of {sel.size}; "
        f"flipped among them {f[sel].mean():.3f}; recall of flips {f[sel].sum() / f.sum():.3f}; "
        f"median mu_true selected {np.median(mu[sel]):.2f} vs rest {np.median(mu[~sel]):.2f}",
        flush=True,
    )
