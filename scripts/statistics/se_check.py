"""Bootstrap standard errors against the spread of the same point's score across seeds."""

import sys

import numpy as np

from fine_cli.artifacts import load_artifact
from fine_cli.stages import estimate

paths = sys.argv[1:]
for est in ("paired", "auc", "alg2"):
    sc, se = [], []
    for p in paths:
        arr, _ = estimate.run(
            load_artifact(p, "signals"), "fine", estimate.EstimateOptions(est, None, 200, 0)
        )
        sc.append(arr["scores"][0])
        se.append(arr["stderr"][0])
    sc, se = np.array(sc), np.array(se)
    across = sc.std(axis=0, ddof=1)
    within = np.sqrt((se**2).mean(axis=0))
    corr = np.corrcoef(within, across)[0, 1]
    print(
        f"{est}: median bootstrap se {np.median(within):.3f}, "
        f"median sd across seeds {np.median(across):.3f}, "
        f"ratio of means {np.mean(within) / np.mean(across):.2f}, corr(se, sd across) {corr:.2f}",
        flush=True,
    )
