"""Per checkpoint: median |noise| / self term of the self-mode contrast D_c (one run)."""

import sys

import numpy as np

from fine_cli.artifacts import load_artifact
from fine_cli.estimators.samples import MAIN, self_null_samples
from fine_cli.estimators.view import signal_view as signals_view

sig = signals_view(load_artifact(sys.argv[1], "signals"))
xn, yn = self_null_samples(sig)
noise = np.abs(xn - yn)  # (n, C*R): the contrast without the self term
b = sig.probe_idx.shape[-1]
self_term = np.repeat(sig.sqnorm[MAIN].astype(float).T, sig.n_repeats, axis=1) / (b + 1)
ratio = np.median(noise / np.maximum(self_term, 1e-30), axis=0).reshape(-1, sig.n_repeats)
for c, v in enumerate(ratio.mean(axis=1)):
    print(f"checkpoint {c + 1:3d}: median |noise| / self term {v:6.2f}")
