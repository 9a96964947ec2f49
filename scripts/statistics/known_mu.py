"""Bias and spread of every estimator on N(mu, 1) vs N(0, 1), N per side, 2000 replicates."""

import numpy as np

from fine_cli.estimators.fine import ESTIMATOR_FNS

for n in (30, 100):
    print(f"N = {n}")
    for mu in (0.0, 0.5, 1.0, 2.0):
        rng = np.random.default_rng(int(mu * 10) + n)
        x, y = rng.normal(mu, 1, (2000, n)), rng.normal(0, 1, (2000, n))
        cells = []
        for name, fn in ESTIMATOR_FNS.items():
            e = fn(x, y, 1)
            cells.append(f"{name} {e.mean() - mu:+.3f} / {e.std():.3f}")
        print(f"  mu={mu}: " + "; ".join(cells))
