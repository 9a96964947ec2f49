"""Which subsets to select at a false discovery rate q, and against which null.

Two nulls, both ending in Benjamini-Hochberg (BH; docs/statistics.md, section 8):

- ``zero``: "S has no influence". The permutation p-values of ``fine estimate`` test it
  exactly, but in self mode every training point influences itself, so this null is
  false almost everywhere and a selection at q holds many ordinary points.
- ``typical`` (the default): "S is as influential as a typical subset". The scores of
  the typical subsets are taken to be N(loc, scale^2); loc and scale are fitted to the
  bulk of the scores by Efron's central matching (Large-Scale Inference, 2010, ch. 6):
  a Poisson regression of the histogram counts on (1, x, x^2) over a window of +-1
  scale around loc, iterated until the window stops moving. It starts at the scores'
  mode (their densest point, by a kernel density estimate), so that with many atypical
  subsets, forming a second bump, the fit stays on the typical one. The scale is never
  taken below the median bootstrap standard error of the subsets inside the window: a
  typical score moves that much by chance, and where the bulk is narrower than that
  (scores pinned near +-sqrt(2/N) by one dominant checkpoint, as with no label noise)
  the fit alone would call chance fluctuations discoveries. The test is one-sided, upper
  tail: a selected subset is *more* influential than a typical one (the ranking's
  direction). p = 1 - Phi((score - loc) / scale), continuous, so q = 0.01 is reachable;
  q-values are Storey's, pi0 times the BH-adjusted p-values, with pi0, the estimated
  proportion of typical subsets, twice the share of p-values above 1/2 (scores below
  loc; atypical subsets lie above it).

The normal lives on one of two scales (``SCALES``). ``linear``: the scores themselves,
right for a noisy statistic such as ``paired``'s, whose spread among typical subsets is
mostly estimation noise. ``log``: the logarithm of the positive scores, right for
``rb``'s, which integrate that noise out and keep the subsets' own heterogeneity: a
self-contrast divided by its probe noise grows like the point's gradient norm, which
spans orders of magnitude between a learned point and a hard one, so the typical scores
have a tail far heavier than normal on the linear scale and about normal on the log
scale (docs/statistics.md, section 8). On the log scale, a score at or below 0 (no
self-effect to speak of) is typical by definition: p = 1, and it counts towards pi0. The
standard errors follow by the delta method, se / score.

Pure math: arrays in, arrays out. Dimension names: G subsets (hypotheses), H histogram
bins of the central window.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from fine_cli.estimators.null import benjamini_hochberg

NULLS = ("typical", "zero")
SCALES = ("linear", "log")
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
# The mode that starts the fit: a Gaussian kernel density estimate (Scott's bandwidth)
# on at most MODE_POINTS evenly spaced order statistics, at MODE_GRID points between
# the 1st and 99th percentiles; the first window's half-width is the interquartile
# range / 1.349 over MODE_SHRINK (narrow enough to hold one bump of two).
MODE_POINTS, MODE_GRID, MODE_SHRINK = 5000, 512, 2.0
# Storey's lambda: pi0 = #(p >= lambda) / ((1 - lambda) G).
STOREY_LAMBDA = 0.5


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
    on: str = "linear"  # the scale of the scores that the normal describes (SCALES)
    excluded: int = 0  # log scale: scores at or below 0, typical by definition (p = 1)


@dataclass(frozen=True)
class Selection:
    """The outcome of one selection at FDR q, each array (G,) in the input's order."""

    selected: np.ndarray  # bool
    qvalue: np.ndarray  # the smallest q at which each subset is selected
    pvalue: np.ndarray  # the p-values the selection used
    null: str  # "typical" or "zero"
    on: str  # the typical null's scale ("linear" or "log"); "linear" for zero
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


def fit_typical_null(
    scores: np.ndarray, stderr: np.ndarray | None = None, on: str = "linear"
) -> EmpiricalNull:
    """Fit the typical-subset null N(loc, scale^2) to scores (G,) on the scale ``on``
    (see the module text); ``stderr`` (G,), the scores' bootstrap standard errors, sets
    the floor of the scale: the median standard error of the subsets inside the current
    window."""
    return _fit_and_pvalues(scores, stderr, on)[0]


def _fit_and_pvalues(
    scores: np.ndarray, stderr: np.ndarray | None, on: str
) -> tuple[EmpiricalNull, np.ndarray]:
    """:func:`fit_typical_null` and the scores' p-values (G,) under it, computed once."""
    if on not in SCALES:
        raise ValueError(f"on must be one of {', '.join(SCALES)}, got {on!r}")
    x = np.asarray(scores, dtype=np.float64)
    se = None if stderr is None else np.asarray(stderr, dtype=np.float64)
    if on == "linear":
        fit = _fit_normal(x, se)
    else:
        keep = x > 0.0
        fit = _fit_normal(np.log(x[keep]), None if se is None else se[keep] / x[keep])
        fit = dataclasses.replace(fit, on="log", excluded=int(x.size - keep.sum()))
    p = typical_pvalues(x, fit)
    return dataclasses.replace(fit, pi0=storey_pi0(p)), p


def storey_pi0(pvalues: np.ndarray) -> float:
    """Storey's estimate of the share of null hypotheses among p-values (G,):
    #(p >= lambda) / ((1 - lambda) G) (a score at loc is typical), within [1/G, 1]."""
    p = np.asarray(pvalues, dtype=np.float64)
    if p.size == 0:
        return 1.0
    share = np.count_nonzero(p >= STOREY_LAMBDA) / ((1.0 - STOREY_LAMBDA) * p.size)
    return float(min(1.0, max(share, 1.0 / p.size)))


def density_mode(x: np.ndarray) -> float:
    """The densest point of values x (G,) by a Gaussian kernel density estimate (see
    MODE_POINTS); the median when they do not spread."""
    xs = np.sort(x)
    q01, q50, q99 = np.quantile(xs, [0.01, 0.5, 0.99])
    if not q99 > q01:
        return float(q50)
    sub = xs[np.linspace(0, xs.size - 1, min(xs.size, MODE_POINTS)).round().astype(np.int64)]
    grid = np.linspace(q01, q99, MODE_GRID)
    try:
        density = stats.gaussian_kde(sub)(grid)
    except (np.linalg.LinAlgError, ValueError):  # all but a few values equal
        return float(q50)
    return float(grid[int(np.argmax(density))])


def _fit_normal(x: np.ndarray, se: np.ndarray | None) -> EmpiricalNull:
    """Central matching with the standard-error floor on values x (G,), se (G,) or None:
    from the mode with a narrow window, else from the median with the robust spread;
    with no fit from either, the median and the larger of the floor and the robust
    spread. pi0 is left at 1 (the caller estimates it from the p-values)."""
    if x.size == 0:
        return EmpiricalNull(0.0, 1.0, 1.0, math.nan, 0.0, False)
    tiny = SCALE_TINY * (1.0 + float(np.max(np.abs(x))))
    q25, q50, q75 = np.quantile(x, [0.25, 0.5, 0.75])
    floor0 = _median(se, 0.0) if se is not None else 0.0
    spread = float(q75 - q25) / 1.349
    for start, width in ((density_mode(x), spread / MODE_SHRINK), (float(q50), spread)):
        fit = _central_matching_from(x, se, start, max(floor0, width, tiny), floor0, tiny)
        if fit is not None:
            return fit
    return EmpiricalNull(float(q50), max(floor0, spread, tiny), 1.0, math.nan, floor0, False)


def _central_matching_from(
    x: np.ndarray, se: np.ndarray | None, loc: float, scale: float, floor: float, tiny: float
) -> EmpiricalNull | None:
    """Iterate central matching from (loc, scale) until the window stops moving; None
    if the first window holds no fit."""
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
    return EmpiricalNull(loc, scale, 1.0, fitted_scale, floor, True) if fitted else None


def typical_pvalues(scores: np.ndarray, null: EmpiricalNull) -> np.ndarray:
    """(G,) upper-tail p-values 1 - Phi((score - loc) / scale) of scores (G,), the score
    on the null's scale (log: 1 for scores at or below 0)."""
    x = np.asarray(scores, dtype=np.float64)
    if null.on == "linear":
        return np.asarray(stats.norm.sf((x - null.loc) / null.scale), dtype=np.float64)
    p = np.ones_like(x)
    keep = x > 0.0
    p[keep] = stats.norm.sf((np.log(x[keep]) - null.loc) / null.scale)
    return p


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
    on: str = "linear",
) -> Selection:
    """Select among scores (G,) at FDR q against ``null``.

    typical: fits :func:`fit_typical_null` on the scale ``on`` (``stderr`` (G,) sets the
    scale's floor); zero: BH on ``pvalues`` (G,), the permutation p-values of "no
    influence"."""
    if not 0.0 < q < 1.0:
        raise ValueError(f"q must lie in (0, 1), got {q}")
    if null == "zero":
        if pvalues is None:
            raise ValueError("the zero null needs the permutation p-values")
        p = np.asarray(pvalues, dtype=np.float64)
        qv = storey_qvalues(p, 1.0)
        return Selection(qv <= q, qv, p, "zero", "linear", 1.0, None)
    if null != "typical":
        raise ValueError(f"null must be one of {', '.join(NULLS)}, got {null!r}")
    fit, p = _fit_and_pvalues(scores, stderr, on)
    qv = storey_qvalues(p, fit.pi0)
    return Selection(qv <= q, qv, p, "typical", on, fit.pi0, fit)
