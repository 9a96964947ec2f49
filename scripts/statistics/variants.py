"""Estimator variants against the retraining truth: Spearman with mu_true, detection
AUROC and Jaccard@20% across seeds (docs/statistics.md, sections 2 and 3).

    python scripts/statistics/variants.py TRUTH.npz SIGNALS_SEED0.npz SIGNALS_SEED1.npz ...
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from fine_cli import metrics, registry
from fine_cli.artifacts import load_artifact
from fine_cli.estimators.fine import ESTIMATOR_FNS, influence_paired
from fine_cli.estimators.samples import (
    MAIN,
    SignalView,
    first_checkpoints,
    self_null_samples,
    self_samples,
)
from fine_cli.estimators.view import signal_view as signals_view
from fine_cli.stages.validate import spearman

Score = Callable[[SignalView], np.ndarray]


def cut(sig: SignalView, k: int | None) -> SignalView:
    return first_checkpoints(sig, k) if k else sig


def contrasts(sig: SignalView) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """D (n, C*R), the null contrast without the self term, and ||g|| per sample."""
    x, y = self_samples(sig)
    xn, yn = self_null_samples(sig)
    gnorm = np.repeat(np.sqrt(sig.sqnorm[MAIN].astype(float)).T, sig.n_repeats, axis=1)
    return x - y, xn - yn, gnorm


def z_scores(sig: SignalView) -> np.ndarray:
    """D / (||g|| kappa_c), kappa_c a robust cross-sectional scale of the null contrasts."""
    d, dn, gn = contrasts(sig)
    ratio = dn / np.maximum(gn, 1e-30)
    kappa = 1.4826 * np.median(np.abs(ratio - np.median(ratio, 0)), 0)
    return d / (gn * kappa)


def estimator(name: str, k: int | None) -> Score:
    def score(sig: SignalView) -> np.ndarray:
        s = cut(sig, k)
        return ESTIMATOR_FNS[name](*self_samples(s), s.n_repeats)

    return score


def baseline(name: str, k: int | None) -> Score:
    return lambda sig: registry.get(name).score(cut(sig, k), None, None)[0]  # type: ignore[misc]


def stouffer(k: int | None) -> Score:
    def score(sig: SignalView) -> np.ndarray:
        z = z_scores(cut(sig, k))
        return z.sum(1) / np.sqrt(z.shape[1])

    return score


def compose(k: int | None) -> Score:
    """Corollary 2.7: sqrt(sum mu_c^2), the noise's expected share C removed, signed."""

    def score(sig: SignalView) -> np.ndarray:
        z = z_scores(cut(sig, k))
        return np.sign(z.sum(1)) * np.sqrt(np.maximum((z**2).sum(1) - z.shape[1], 0.0))

    return score


def exact_self_term(k: int | None) -> Score:
    """Per-checkpoint mu_c with the exact self term ||g||^2 / b over the noise scale."""

    def score(sig: SignalView) -> np.ndarray:
        s = cut(sig, k)
        _, dn, gn = contrasts(s)
        b = s.probe_idx.shape[-1]
        kappa = np.sqrt(np.mean((dn / np.maximum(gn, 1e-30)) ** 2, 0))
        return np.sqrt((((gn**2 / b) / (gn * kappa)) ** 2).sum(1))

    return score


def scaled_paired(k: int | None, how: str) -> Score:
    """paired on D scaled per checkpoint by the rms or median of |D_c| over points."""

    def score(sig: SignalView) -> np.ndarray:
        s = cut(sig, k)
        d = contrasts(s)[0]
        a = np.abs(d).reshape(d.shape[0], s.n_checkpoints, s.n_repeats)
        scale = np.median(a, axis=(0, 2)) if how == "median" else np.sqrt((a**2).mean((0, 2)))
        dn = d / np.repeat(scale, s.n_repeats)
        return influence_paired(dn, np.zeros_like(dn))

    return score


def main() -> None:
    truth = load_artifact(sys.argv[1], "truth")
    sigs = [signals_view(load_artifact(p, "signals")) for p in sys.argv[2:]]
    mu, flip = truth["mu_true"], truth["flip_mask"]
    cands: dict[str, Score] = {}
    for k in (None, 10, 15):
        tag = k or "all"
        for name in ESTIMATOR_FNS:
            cands[f"{name}@{tag}"] = estimator(name, k)
        cands[f"tracin@{tag}"] = baseline("tracin", k)
        cands[f"stouffer@{tag}"] = stouffer(k)
        cands[f"compose@{tag}"] = compose(k)
        cands[f"exact-self-term@{tag}"] = exact_self_term(k)
        cands[f"paired-rms@{tag}"] = scaled_paired(k, "rms")
        cands[f"paired-median@{tag}"] = scaled_paired(k, "median")
    print(f"{'candidate':22s} {'rho_mu':>7s} {'auroc':>6s} {'jac20':>6s}")
    for name, fn in cands.items():
        scores = [fn(s) for s in sigs]
        rankings = [np.argsort(-s, kind="stable") for s in scores]
        rho = np.mean([spearman(s, mu) for s in scores])
        auroc = np.mean([metrics.auroc(s, flip) for s in scores])
        jac = metrics.jaccard_consistency(rankings, 20) if len(sigs) > 1 else float("nan")
        print(f"{name:22s} {rho:7.3f} {auroc:6.3f} {jac:6.3f}", flush=True)


if __name__ == "__main__":
    main()
