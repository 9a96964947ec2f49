"""Which subsets to select at a false discovery rate q, and against which null.

Two nulls, both ending in Benjamini-Hochberg (BH; docs/statistics.md, section 8):

- ``zero``: "S has no influence". The permutation p-values of ``fine estimate`` test it
  exactly, but in self mode every training point influences itself, so this null is
  false almost everywhere and a selection at q holds many ordinary points.
- ``typical`` (the default): "S is as influential as a typical subset". The scores of
  the typical subsets are taken to be N(loc, scale^2); loc and scale are fitted to the
  bulk of the scores by Efron's central matching (Large-Scale Inference, 2010, ch. 6):
  a Poisson regression of the histogram counts on (1, x, x^2) over a window of +-1
  scale around loc, iterated until the window stops moving. The scale is never taken
  below the median bootstrap standard error of the subsets inside the window: a typical
  score moves that much by chance, and where the bulk is narrower than that (scores
  pinned near +-sqrt(2/N) by one dominant checkpoint, as with no label noise) the fit
  alone would call chance fluctuations discoveries. The test is one-sided, upper tail:
  a selected subset is *more* influential than a typical one (the ranking's direction).
  p = 1 - Phi((score - loc) / scale), continuous, so q = 0.01 is reachable; q-values
  are Storey's, pi0 times the BH-adjusted p-values, with pi0 the estimated proportion
  of typical subsets (the count in the central window over its expected share).

Pure math: arrays in, arrays out. Dimension names: G subsets (hypotheses), H histogram
bins of the central window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fine_cli.estimators.null import benjamini_hochberg

NULLS = ("typical", "zero")
# The central-matching window, in null scales below and above loc: +-1 holds 68% of the
# typical scores and little of an upper tail of atypical ones (narrower windows gave
# scales that jumped from seed to seed, asymmetric ones locations; docs/statistics.md).
WINDOW_SD = (1.0, 1.0)
# Fewest scores inside the window for a histogram fit; with fewer, loc is the median
# and scale the floor (or a robust spread).
MIN_FIT_POINTS = 40
# Histogram bins of the window: about sqrt(points inside), within these bounds.
MIN_BINS, MAX_BINS = 8, 60
MAX_ITER = 50
# Window moves smaller than this fraction of the scale end the iteration.
TOL = 1e-6
# Floor of the scale relative to the scores' magnitude: equal scores stay finite.
SCALE_TINY = 1e-12


@dataclass(frozen=True)
class EmpiricalNull:
    """N(loc, scale^2), the scores of typical subsets, and what it was fitted from."""

    loc: float
    scale: float
    pi0: float  # estimated proportion of typical subsets, in (0, 1]
    fitted_scale: float  # central matching's scale before the floor (nan if no fit)
    floor: float  # median bootstrap standard error inside the window (0 when none given)
    fitted: bool  # False: too few scores or no concave fit; loc is the median, scale
    # the larger of the floor and the interquartile range / 1.349


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection at FDR q, each array (G,) in the input's order."""

    selected: np.ndarray  # bool
    qvalue: np.ndarray  # the smallest q at which each subset is selected
    pvalue: np.ndarray  # the p-values the selection used
    null: str  # "typical" or "zero"
    pi0: float  # proportion of null subsets assumed (1 for zero)
    fit: EmpiricalNull | None  # the typical null's fit (None for zero)


def poisson_quadratic(u: np.ndarray, counts: np.ndarray) -> np.ndarray | None:
    """(3,) coefficients b of log E[counts] = b0 + b1 u + b2 u^2, by Poisson maximum
    likelihood (IRLS) over bins at u (H,) with ``counts`` (H,); None if it fails.

    The log-likelihood is concave in b, so IRLS from a flat start finds the maximum."""
    x = np.stack([np.ones_like(u), u, u * u], axis=1)  # (H, 3)
    beta = np.array([math.log(max(float(counts.mean()), 1e-9)), 0.0, 0.0])
    for _ in range(100):
        eta = x @ beta
        mu = np.exp(eta)
        work = eta + (counts - mu) / mu
        w = np.sqrt(mu)
        new = np.linalg.lstsq(w[:, None] * x, w * work, rcond=None)[0]
        if not np.all(np.isfinite(new)):
            return None
        if np.max(np.abs(new - beta)) < 1e-10:
            return new
        beta = new
    return None


def central_matching(x: np.ndarray, lo: float, hi: float) -> tuple[float, float] | None:
    """(loc, scale) of the normal whose log-density matches the histogram of the scores
    x (G,) inside [lo, hi]; None with too few scores there or a log-density that is not
    concave (no normal fits it)."""
    inside = x[(x >= lo) & (x <= hi)]
    if inside.size < MIN_FIT_POINTS or not hi > lo:
        return None
    n_bins = int(np.clip(round(math.sqrt(inside.size)), MIN_BINS, MAX_BINS))
    edges = np.linspace(lo, hi, n_bins + 1)
    counts, _ = np.histogram(inside, edges)
    if np.count_nonzero(counts) < 3:  # a quadratic needs three occupied bins
        return None
    mid, half = (lo + hi) / 2.0, (hi - lo) / 2.0
    u = ((edges[:-1] + edges[1:]) / 2.0 - mid) / half  # bin centres in [-1, 1]
    beta = poisson_quadratic(u, counts.astype(np.float64))
    if beta is None or beta[2] >= 0.0:
        return None
    vertex = -beta[1] / (2.0 * beta[2])
    return float(mid + half * vertex), float(half * math.sqrt(-1.0 / (2.0 * beta[2])))


def _median(a: np.ndarray, default: float) -> float:
    """Median of the defined (finite) values of ``a``; ``default`` when there are none."""
    finite = a[np.isfinite(a)]
    return float(np.median(finite)) if finite.size else default


def fit_typical_null(scores: np.ndarray, stderr: np.ndarray | None = None) -> EmpiricalNull:
    """Fit the typical-subset null N(loc, scale^2) to scores (G,) (see the module text);
    ``stderr`` (G,), the scores' bootstrap standard errors, sets the floor of the scale:
    the median standard error of the subsets inside the current window."""
    x = np.asarray(scores, dtype=np.float64)
    se = None if stderr is None else np.asarray(stderr, dtype=np.float64)
    if x.size == 0:
        return EmpiricalNull(0.0, 1.0, 1.0, math.nan, 0.0, False)
    tiny = SCALE_TINY * (1.0 + float(np.max(np.abs(x))))
    q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    floor = _median(se, 0.0) if se is not None else 0.0
    loc, scale = float(q50), max(floor, float(q75 - q25) / 1.349, tiny)
    fitted_scale, fitted = math.nan, False
    for _ in range(MAX_ITER):
        lo, hi = loc - WINDOW_SD[0] * scale, loc + WINDOW_SD[1] * scale
        fit = central_matching(x, lo, hi)
        if fit is None or not lo <= fit[0] <= hi:
            break  # keep the last window that held a fit
        new_loc, fitted_scale = fit
        if se is not None:  # the typical subsets' own standard error
            floor = _median(se[(x >= lo) & (x <= hi)], floor)
        new_scale = max(fitted_scale, floor, tiny)
        fitted = True
        moved = abs(new_loc - loc) + abs(new_scale - scale)
        loc, scale = new_loc, new_scale
        if moved < TOL * scale:
            break
    lo, hi = loc - WINDOW_SD[0] * scale, loc + WINDOW_SD[1] * scale
    inside = np.count_nonzero((x >= lo) & (x <= hi))
    share = stats.norm.cdf(WINDOW_SD[1]) - stats.norm.cdf(-WINDOW_SD[0])
    pi0 = max(min(1.0, inside / (share * x.size)), 1.0 / x.size)
    return EmpiricalNull(loc, scale, pi0, fitted_scale, floor, fitted)


def typical_pvalues(scores: np.ndarray, null: EmpiricalNull) -> np.ndarray:
    """(G,) upper-tail p-values 1 - Phi((score - loc) / scale) of scores (G,)."""
    z = (np.asarray(scores, dtype=np.float64) - null.loc) / null.scale
    return np.asarray(stats.norm.sf(z), dtype=np.float64)


def storey_qvalues(pvalues: np.ndarray, pi0: float) -> np.ndarray:
    """(G,) q-values pi0 * (BH-adjusted p-values), capped at 1: selecting q-value <= q
    is BH at level q / pi0 (plain BH when pi0 = 1)."""
    _, adjusted = benjamini_hochberg(pvalues, 0.5)
    return np.minimum(1.0, pi0 * adjusted)


def select(
    scores: np.ndarray,
    q: float,
    null: str = "typical",
    *,
    stderr: np.ndarray | None = None,
    pvalues: np.ndarray | None = None,
) -> Selection:
    """Select among scores (G,) at FDR q against ``null``.

    typical: fits :func:`fit_typical_null` (``stderr`` (G,) sets the scale's floor);
    zero: BH on ``pvalues`` (G,), the permutation p-values of "no influence"."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if null == "zero":
        if pvalues is None:
            raise ValueError("the zero null needs the permutation p-values")
        p = np.asarray(pvalues, dtype=np.float64)
        qv = storey_qvalues(p, 1.0)
        return Selection(qv <= q, qv, p, "zero", 1.0, None)
    if null != "typical":
        raise ValueError(f"null must be one of {', '.join(NULLS)}, got {null!r}")
    fit = fit_typical_null(scores, stderr)
    p = typical_pvalues(scores, fit)
    qv = storey_qvalues(p, fit.pi0)
    return Selection(qv <= q, qv, p, "typical", fit.pi0, fit)
