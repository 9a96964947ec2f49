"""Selection at a false discovery rate against the typical and the zero null
(fine_cli/selection.py): each fast path against a slow twin, calibration on data with a
known null, and the rank command's --fdr / --null."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import optimize
from typer.testing import CliRunner

from fine_cli import selection
from fine_cli.cli import app
from fine_cli.estimators import null
from fine_cli.estimators.fine import ESTIMATOR_FNS
from fine_cli.stages.rank import TYPICAL_SCALE

runner = CliRunner()
EXACT = 1e-9
COEF_TOL = 1e-5  # IRLS against a general-purpose optimiser
FIT_TOL = 0.03  # loc and scale of 20,000 normal scores (sd of the estimates about 0.01)
CAL_REPS = 30


def _bh_by_loop(p: np.ndarray, q: float) -> np.ndarray:
    """Benjamini-Hochberg as its step-up definition reads: the largest k with
    p_(k) <= k q / G, then every p at most p_(k)."""
    srt = sorted(p)
    k = 0
    for i, v in enumerate(srt, start=1):
        if v <= i * q / len(srt):
            k = i
    return p <= srt[k - 1] if k else np.zeros(len(p), bool)


def _scores(rng: np.random.Generator, g: int, frac: float) -> tuple[np.ndarray, ...]:
    """Scores (G,) of typical subsets N(0.3, 0.2^2) (heterogeneity and noise together)
    and a share ``frac`` of atypical ones N(1.2, 0.3^2); stderr (G,) about 0.2; the
    atypical mask (G,)."""
    alt = rng.random(g) < frac
    scores = np.where(alt, rng.normal(1.2, 0.3, g), rng.normal(0.3, 0.2, g))
    return scores, rng.uniform(0.15, 0.25, g), alt


def test_poisson_quadratic_equals_direct_maximisation() -> None:
    rng = np.random.default_rng(0)
    u = np.linspace(-1, 1, 25)
    counts = rng.poisson(np.exp(4.0 + 0.3 * u - 1.2 * u * u)).astype(float)
    beta = selection.poisson_quadratic(u, counts)
    assert beta is not None
    x = np.stack([np.ones_like(u), u, u * u], axis=1)

    def neg_loglik(b: np.ndarray) -> float:
        eta = x @ b
        return float(np.sum(np.exp(eta) - counts * eta))

    direct = optimize.minimize(neg_loglik, np.zeros(3), method="BFGS", options={"gtol": 1e-10})
    np.testing.assert_allclose(beta, direct.x, atol=COEF_TOL)


def test_poisson_quadratic_is_exact_on_exact_counts() -> None:
    u = np.linspace(-1, 1, 11)
    b = np.array([3.0, -0.4, -2.0])
    beta = selection.poisson_quadratic(u, np.exp(b[0] + b[1] * u + b[2] * u * u))
    assert beta is not None
    np.testing.assert_allclose(beta, b, atol=EXACT)


def test_central_matching_recovers_a_normal() -> None:
    x = np.random.default_rng(1).normal(0.3, 0.2, 20_000)
    loc, scale = selection.central_matching(x, 0.1, 0.5) or (math.nan, math.nan)
    assert loc == pytest.approx(0.3, abs=FIT_TOL) and scale == pytest.approx(0.2, abs=FIT_TOL)
    assert selection.central_matching(x, 5.0, 6.0) is None  # too few scores in the window


def test_fit_finds_the_bulk_under_contamination() -> None:
    rng = np.random.default_rng(2)
    x, se, _ = _scores(rng, 20_000, 0.2)
    fit = selection.fit_typical_null(x, se * 0.5)  # floor below the spread: the fit decides
    assert fit.fitted and fit.scale == pytest.approx(fit.fitted_scale)
    assert fit.loc == pytest.approx(0.3, abs=FIT_TOL)
    assert fit.scale == pytest.approx(0.2, abs=FIT_TOL)
    assert fit.pi0 == pytest.approx(0.8, abs=0.05)


def test_scale_never_goes_below_the_standard_error() -> None:
    # Two spikes (scores pinned by one dominant checkpoint) and a thin spread: the bulk
    # looks far narrower than the scores' own standard error of 0.2.
    rng = np.random.default_rng(3)
    spikes = rng.choice([-0.26, 0.26], 4000, p=[0.3, 0.7]) + rng.normal(0, 0.01, 4000)
    x = np.where(rng.random(4000) < 0.4, rng.normal(0.1, 0.15, 4000), spikes)
    se = np.full(4000, 0.2)
    fit = selection.fit_typical_null(x, se)
    assert fit.scale >= 0.2 and fit.floor == pytest.approx(0.2)
    assert selection.select(x, 0.1, stderr=se).selected.sum() <= 2
    # without the floor the narrow spike is taken for the null and its shoulder selected
    assert selection.select(x, 0.1).selected.sum() > 50


def _log_scores(rng: np.random.Generator, g: int, frac: float) -> tuple[np.ndarray, ...]:
    """rb-like scores (G,): typical subsets log-normal (their own heterogeneity, a tail
    far heavier than normal), a share ``frac`` of atypical ones 4.5 times larger with
    less spread, and 5% of typical ones at or below 0; stderr (G,) 5% of the score;
    the atypical mask (G,)."""
    alt = rng.random(g) < frac
    scores = np.where(alt, 4.5 * rng.lognormal(-1.2, 0.25, g), rng.lognormal(-1.2, 0.6, g))
    scores = np.where(~alt & (rng.random(g) < 0.05), -0.01 * rng.random(g), scores)
    return scores, 0.05 * np.abs(scores), alt


def test_the_mode_starts_the_fit_on_the_larger_bump() -> None:
    rng = np.random.default_rng(11)
    x = np.concatenate([rng.normal(0.0, 0.3, 6000), rng.normal(1.5, 0.25, 4000)])
    assert selection.density_mode(x) == pytest.approx(0.0, abs=0.1)
    fit = selection.fit_typical_null(x)
    assert fit.fitted and fit.loc == pytest.approx(0.0, abs=FIT_TOL)
    assert fit.scale == pytest.approx(0.3, abs=FIT_TOL)
    assert fit.pi0 == pytest.approx(0.6, abs=0.03)  # Storey: twice the share below loc


def test_storey_pi0_is_the_share_above_lambda_doubled() -> None:
    p = np.random.default_rng(12).uniform(size=501) ** 2
    want = sum(1 for v in p if v >= 0.5) / (0.5 * len(p))
    assert selection.storey_pi0(p) == pytest.approx(min(1.0, want), rel=EXACT)
    assert selection.storey_pi0(np.zeros(4)) == 0.25  # never below 1/G


def test_log_scale_fits_the_log_scores_and_leaves_non_positive_ones_typical() -> None:
    rng = np.random.default_rng(13)
    x, se, _ = _log_scores(rng, 20_000, 0.0)
    fit = selection.fit_typical_null(x, se, on="log")
    assert fit.on == "log" and fit.excluded == int((x <= 0).sum()) > 0
    assert fit.loc == pytest.approx(-1.2, abs=FIT_TOL) and fit.scale == pytest.approx(
        0.6, abs=FIT_TOL
    )
    p = selection.typical_pvalues(x, fit)
    assert np.all(p[x <= 0] == 1.0)
    pos = x > 0
    want = [
        0.5 * math.erfc((math.log(v) - fit.loc) / fit.scale / math.sqrt(2.0)) for v in x[pos][:50]
    ]
    np.testing.assert_allclose(p[pos][:50], want, rtol=1e-9)
    # the same typical scores on the linear scale: a tail far heavier than the fit's
    assert selection.select(x, 0.05, stderr=se).selected.sum() > 100
    assert selection.select(x, 0.05, stderr=se, on="log").selected.sum() <= 5
    with pytest.raises(ValueError, match="on must"):
        selection.fit_typical_null(x, se, on="sqrt")


@pytest.mark.parametrize("q", [0.01, 0.05, 0.1])
def test_false_discovery_rate_is_controlled_on_the_log_scale(q: float) -> None:
    rng = np.random.default_rng(14)
    fdp, power = [], []
    for _ in range(CAL_REPS):
        x, se, alt = _log_scores(rng, 2000, 0.2)
        sel = selection.select(x, q, stderr=se, on="log").selected
        fdp.append((sel & ~alt).sum() / max(sel.sum(), 1))
        power.append((sel & alt).sum() / alt.sum())
    assert np.mean(fdp) <= q + 2 * np.std(fdp) / math.sqrt(CAL_REPS) + 1e-3
    assert q < 0.05 or np.mean(power) > 0.3  # at 0.01 the bump lies too close (2.5 sd)


def test_typical_pvalues_equal_the_normal_tail() -> None:
    x = np.array([-1.0, 0.3, 0.9, 2.5])
    fit = selection.EmpiricalNull(0.3, 0.2, 0.8, 0.2, 0.1, True)
    want = [0.5 * math.erfc((v - 0.3) / 0.2 / math.sqrt(2.0)) for v in x]
    np.testing.assert_allclose(selection.typical_pvalues(x, fit), want, rtol=1e-12)


def test_storey_qvalues_select_as_bh_at_q_over_pi0() -> None:
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.uniform(size=300), rng.uniform(0, 1e-3, 60)])
    for pi0 in (1.0, 0.8, 0.5):
        qv = selection.storey_qvalues(p, pi0)
        for q in (0.01, 0.05, 0.2):
            np.testing.assert_array_equal(qv <= q, _bh_by_loop(p, q / pi0))


def test_zero_null_is_plain_bh_on_the_permutation_pvalues() -> None:
    rng = np.random.default_rng(5)
    p = rng.uniform(size=200) ** 3
    sel = selection.select(np.zeros(200), 0.1, "zero", pvalues=p)
    expect_sel, expect_adj = null.benjamini_hochberg(p, 0.1)
    np.testing.assert_array_equal(sel.selected, expect_sel)
    np.testing.assert_allclose(sel.qvalue, expect_adj)
    assert sel.fit is None and sel.pi0 == 1.0


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(ValueError, match="q must"):
        selection.select(np.zeros(5), 1.0)
    with pytest.raises(ValueError, match="null must"):
        selection.select(np.zeros(5), 0.1, "none")
    with pytest.raises(ValueError, match="p-values"):
        selection.select(np.zeros(5), 0.1, "zero")


def test_equal_scores_select_nothing() -> None:
    sel = selection.select(np.full(100, 0.7), 0.1, stderr=np.zeros(100))
    assert not sel.selected.any() and np.all(np.isfinite(sel.qvalue))


@pytest.mark.parametrize("q", [0.01, 0.05, 0.1])
def test_false_discovery_rate_is_controlled(q: float) -> None:
    rng = np.random.default_rng(6)
    fdp, power = [], []
    for _ in range(CAL_REPS):
        x, se, alt = _scores(rng, 2000, 0.2)
        sel = selection.select(x, q, stderr=se).selected
        fdp.append((sel & ~alt).sum() / max(sel.sum(), 1))
        power.append((sel & alt).sum() / alt.sum())
    # mean FDP at most q, within two standard errors of the mean over the repetitions
    assert np.mean(fdp) <= q + 2 * np.std(fdp) / math.sqrt(CAL_REPS) + 1e-3
    assert np.mean(power) > 0.5


def test_all_null_selects_almost_nothing() -> None:
    rng = np.random.default_rng(7)
    any_selected = [
        selection.select(
            *_scores(rng, 2000, 0.0)[:1], 0.05, stderr=np.full(2000, 0.2)
        ).selected.any()
        for _ in range(CAL_REPS)
    ]
    assert np.mean(any_selected) <= 0.15  # FDR = P(any) under the global null; 0.05 + slack


def test_on_samples_the_zero_null_selects_ordinary_subsets_and_typical_does_not() -> None:
    # Samples as fine estimate sees them: every subset has an effect (theta > 0), a fifth
    # a large one; paired scores, bootstrap standard errors, permutation p-values.
    rng = np.random.default_rng(8)
    g, n = 1000, 30
    w = 3.0 * np.exp(-np.arange(n) / 6.0) + 0.3  # early checkpoints dominate
    alt = rng.random(g) < 0.2
    theta = rng.normal(0.4, 0.1, g) + 1.2 * alt
    y = rng.normal(size=(g, n)) + np.linspace(3, 0, n)
    x = y + w * (theta[:, None] + rng.uniform(0.5, 2.0, (g, 1)) * rng.normal(size=(g, n)))
    fn = ESTIMATOR_FNS["paired"]
    scores = fn(x, y, 1)
    se = null.bootstrap_se(x, y, fn, 1, null.bootstrap_columns(n, 1, 50, rng))
    perm = null.permutation_null(x, y, fn, 1, null.swap_masks(n, 999, rng))
    p = null.permutation_pvalues(scores, perm, "two-sided")
    zero = selection.select(scores, 0.05, "zero", pvalues=p).selected
    typical = selection.select(scores, 0.05, stderr=se).selected
    assert (zero & ~alt).sum() / max(zero.sum(), 1) > 0.3
    assert typical.sum() >= 50 and (typical & ~alt).sum() / typical.sum() <= 0.1


def meta_on(ranking: Any) -> str:
    return str(ranking.meta["fdr"]["scale_on"])


def test_rank_fdr_typical_by_default_and_zero_on_request(
    tiny_signals: Path, tmp_path: Path
) -> None:
    from fine_cli.artifacts import load_artifact

    inf, rk = tmp_path / "influence.npz", tmp_path / "ranking.npz"
    res = runner.invoke(
        app, ["estimate", str(tiny_signals), "--permutations", "99", "-o", str(inf)]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.2", "--top", "3", "-o", str(rk)])
    assert res.exit_code == 0, res.output
    assert "typical null" in res.output and "ordinary" in res.output
    ranking, influence = load_artifact(str(rk), "ranking"), load_artifact(str(inf), "influence")
    on = TYPICAL_SCALE[influence.meta["estimator"]]  # the default estimator's: log for rb
    assert meta_on(ranking) == on
    want = selection.select(influence["scores"][0], 0.2, stderr=influence["stderr"][0], on=on)
    order = ranking["order"]
    np.testing.assert_array_equal(ranking["selected"], want.selected[order])
    np.testing.assert_allclose(ranking["pvalue_typical"], want.pvalue[order])
    meta = ranking.meta["fdr"]
    assert meta["null"] == "typical" and meta["selected"] == int(want.selected.sum())
    assert meta["pi0"] == pytest.approx(want.pi0)
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.2", "--null", "zero", "-o", str(rk)])
    assert res.exit_code == 0 and "zero null" in res.output
    ranking = load_artifact(str(rk), "ranking")
    sel, _ = null.benjamini_hochberg(influence["pvalue"][0], 0.2)
    np.testing.assert_array_equal(ranking["selected"], sel[ranking["order"]])
    assert "pvalue_typical" not in ranking and ranking.meta["fdr"]["null"] == "zero"


def test_rank_typical_null_needs_standard_errors(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "influence.npz"
    res = runner.invoke(
        app,
        ["estimate", str(tiny_signals), "--bootstrap", "0", "--permutations", "9", "-o", str(inf)],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.05"])
    assert res.exit_code == 2 and "--bootstrap" in res.output
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.05", "--null", "zero"])
    assert res.exit_code == 0, res.output


def test_no_subsets_select_nothing() -> None:
    sel = selection.select(np.zeros(0), 0.05, stderr=np.zeros(0))
    assert sel.selected.shape == sel.qvalue.shape == (0,)
