"""Variance-reduced f-INE candidates against the retraining truth (docs/statistics.md,
section 3b). Reads signals and the extras of ``vr_collect.py`` for several seeds.

    python scripts/statistics/vr_variants.py TRUTH.npz SIG_s0.npz EXT_s0.npz SIG_s1.npz ...

Per checkpoint c and point z (self mode, main model only; b probe batch size, N points):
    s_c      = ||g_c(z)||^2
    mu1_c    = mean_{j != z} <g_c(z), g_c(z_j)>    (full gradient, reference set or probes)
    m2_c     = mean_{j != z} <g_c(z), g_c(z_j)>^2  (reference Gram block)
    m_c      = (s_c - mu1_c) / (b + 1)             E[D_c | checkpoint]: paired's R -> inf mean
    v_c      = b sigma1^2 f (1/(b+1)^2 + 1/b^2)    Var[D_c | checkpoint], sigma1^2 = m2 - mu1^2
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import numpy as np

from fine_cli import metrics
from fine_cli.artifacts import load_artifact
from fine_cli.estimators.fine import influence_paired
from fine_cli.estimators.samples import MAIN, SignalView, self_samples
from fine_cli.estimators.view import signal_view
from fine_cli.stages.validate import spearman

Score = Callable[[SignalView, dict, slice], np.ndarray]
TINY = 1e-30


def parts(sig: SignalView, ext: dict, mu1_from: str) -> dict[str, np.ndarray]:
    """(C, n) per-checkpoint moments of the main model."""
    n = sig.n_train
    b = float(sig.probe_idx.shape[-1])
    s = sig.sqnorm[MAIN].astype(np.float64)  # (C, n)
    if mu1_from == "full":
        mu1 = (ext["fullip"] - s) / (n - 1)
    elif mu1_from == "ref":
        mu1 = ext["ref_s1"] / ext["ref_n"]
    else:  # the probe batches: both sides of every pair, z's own term removed
        k = sig.probe_counts()  # (C, R, 2, n)
        ip = sig.ip[MAIN].astype(np.float64)  # (C, R, 2, n)
        mu1 = (ip - k * s[:, None, None]).sum((1, 2)) / (b * 2 * sig.n_repeats - k.sum((1, 2)))
    m2 = ext["ref_s2"] / ext["ref_n"]
    var1 = np.maximum(m2 - mu1**2, 0.0)
    f = (n - b) / (n - 1)
    m = (s - mu1) / (b + 1)
    v = b * var1 * f * (1 / (b + 1) ** 2 + 1 / b**2)
    return {"s": s, "mu1": mu1, "m2": m2, "m": m, "v": v, "lr": sig.lr.astype(np.float64)}


def rb_paired(p: dict, w: slice) -> np.ndarray:
    """paired's many-probe limit: sqrt(2) mean_c m / sqrt(mean_c v + var_c m)."""
    m, v = p["m"][w], p["v"][w]
    return np.sqrt(2) * m.mean(0) / np.sqrt(v.mean(0) + m.var(0) + TINY)


def rb_snr(p: dict, w: slice) -> np.ndarray:
    """sum_c m / sqrt(sum_c v): the mean-contrast test over checkpoints."""
    return p["m"][w].sum(0) / np.sqrt(p["v"][w].sum(0) + TINY)


def rb_compose(p: dict, w: slice) -> np.ndarray:
    """Corollary 2.7 with signs: sign(sum mu_c) sqrt(sum mu_c^2), mu_c = m_c / sqrt(v_c)."""
    mu = p["m"][w] / np.sqrt(p["v"][w] + TINY)
    return np.sign(mu.sum(0)) * np.sqrt((mu**2).sum(0))


def rb_ivw(p: dict, w: slice) -> np.ndarray:
    """Inverse-variance weighted mean of m_c over its se: sum(m/v) / sqrt(sum 1/v)."""
    m, v = p["m"][w], p["v"][w] + TINY
    return (m / v).sum(0) / np.sqrt((1 / v).sum(0))


def rb_stouffer(p: dict, w: slice) -> np.ndarray:
    mu = p["m"][w] / np.sqrt(p["v"][w] + TINY)
    return mu.sum(0) / np.sqrt(mu.shape[0])


def mean_only(p: dict, w: slice) -> np.ndarray:
    """sum_c m_c: TracIn's self term with the mean-gradient control variate."""
    return p["m"][w].sum(0)


def tracin(p: dict, w: slice) -> np.ndarray:
    return (p["lr"][w, None] * p["s"][w]).sum(0)


def snr_tracin(p: dict, w: slice) -> np.ndarray:
    """sum_c s_c / sqrt(sum_c v_c): TracIn's numerator over the RB noise."""
    return p["s"][w].sum(0) / np.sqrt(p["v"][w].sum(0) + TINY)


def probe_noise_snr(p: dict, w: slice, d: np.ndarray) -> np.ndarray:
    """sum_c m / sqrt(sum_c (D_c - m_c)^2): the noise scale from the probe pair itself."""
    m = p["m"][w]
    noise = d[w] - m
    return m.sum(0) / np.sqrt((noise**2).sum(0) + TINY)


def cv_paired(p: dict, w: slice, d: np.ndarray) -> np.ndarray:
    """paired with the RB mean in the numerator, the samples' sd in the denominator."""
    m = p["m"][w]
    return np.sqrt(2) * m.mean(0) / (d[w].std(0, ddof=1) + TINY)


def main() -> None:
    truth = load_artifact(sys.argv[1], "truth")
    files = sys.argv[2:]
    runs = []
    for sp, ep in zip(files[::2], files[1::2]):
        sig = signal_view(load_artifact(sp, "signals"))
        ext = dict(np.load(ep))
        x, y = self_samples(sig)
        d = (x - y).reshape(sig.n_train, sig.n_checkpoints, sig.n_repeats).mean(2).T  # (C, n)
        runs.append((sig, ext, d))
    mu, flip = truth["mu_true"], truth["flip_mask"]
    c = runs[0][0].n_checkpoints
    windows = {"all": slice(None), "10": slice(0, 10), "15": slice(0, 15), "5": slice(0, 5)}
    rows: list[tuple[str, list[np.ndarray]]] = []
    for wname, w in windows.items():
        if w.stop and w.stop > c:
            continue
        scored: dict[str, list[np.ndarray]] = {}
        for sig, ext, d in runs:
            from fine_cli.estimators.samples import first_checkpoints

            cut = first_checkpoints(sig, w.stop) if w.stop else sig
            xs, ys = self_samples(cut)
            scored.setdefault("paired", []).append(influence_paired(xs, ys))
            for src in ("full", "ref", "probe"):
                p = parts(sig, ext, src)
                for fn in (rb_paired, rb_snr, rb_compose, rb_ivw, rb_stouffer, mean_only):
                    scored.setdefault(f"{fn.__name__}/{src}", []).append(fn(p, w))
                scored.setdefault(f"probe_noise_snr/{src}", []).append(probe_noise_snr(p, w, d))
                scored.setdefault(f"cv_paired/{src}", []).append(cv_paired(p, w, d))
            p = parts(sig, ext, "probe")
            scored.setdefault("tracin", []).append(tracin(p, w))
            scored.setdefault("snr_tracin", []).append(snr_tracin(p, w))
        rows += [(f"{k}@{wname}", v) for k, v in scored.items()]
    print(f"{'candidate':28s} {'rho_mu':>7s} {'sd':>6s} {'auroc':>6s} {'sd':>6s} {'jac20':>6s}")
    for name, scores in rows:
        rho = [spearman(s, mu) for s in scores]
        au = [metrics.auroc(s, flip) for s in scores]
        jac = metrics.jaccard_consistency([np.argsort(-s, kind="stable") for s in scores], 20)
        print(
            f"{name:28s} {np.mean(rho):7.3f} {np.std(rho, ddof=1) if len(rho) > 1 else 0:6.3f}"
            f" {np.mean(au):6.3f} {np.std(au, ddof=1) if len(au) > 1 else 0:6.3f} {jac:6.3f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
