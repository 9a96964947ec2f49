"""f-INE statistics: estimators on samples with known mu, bootstrap standard errors, the
permutation null, Benjamini-Hochberg; each fast path against a slow twin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from fine_cli.artifacts import load_artifact
from fine_cli.cli import app
from fine_cli.config import DEFAULT_ESTIMATOR, ESTIMATORS, EstimateConfig
from fine_cli.errors import FineError
from fine_cli.estimators import null
from fine_cli.estimators.fine import (
    ESTIMATOR_DESCRIPTIONS,
    ESTIMATOR_FNS,
    MOMENT_ESTIMATORS,
    auc_with,
    influence_alg2,
    influence_rb,
)
from fine_cli.estimators.fine_method import fine_statistics
from fine_cli.estimators.samples import (
    first_checkpoints,
    query_samples,
    resolve_window,
    self_moments,
    self_samples,
)
from fine_cli.estimators.view import signal_view
from fine_cli.results import Result
from fine_cli.stages import estimate
from tests.conftest import parts

runner = CliRunner()
EXACT = 1e-10
# Sums of squares minus squared sums, against two-pass variances.
MOMENTS = 1e-9
# Estimators of mu from N = 100 samples per side, on N(mu, 1) vs N(0, 1) (300 replicates):
# the unbiased ones (auc, std, paired) are within BIAS_BOUND of mu on average with a
# spread (sd over replicates) under SPREAD_BOUND; measured bias < 0.03, sd 0.14 - 0.19.
BIAS_BOUND = 0.08
SPREAD_BOUND = 0.25
# Algorithm 2 at mu = 0: |mu_alg| is about 0.45 on average (measured 0.43 - 0.50).
ALG2_NULL_MAGNITUDE = (0.3, 0.65)
# A p-value distribution is called uniform when a Kolmogorov-Smirnov test does not
# reject at this level.
KS_LEVEL = 0.01


def test_registry_matches_the_config_names() -> None:
    # estimators of samples, then those computed from per-checkpoint moments (rb)
    assert (*ESTIMATOR_FNS, *sorted(MOMENT_ESTIMATORS)) == ESTIMATORS
    assert set(ESTIMATOR_DESCRIPTIONS) == set(ESTIMATORS)
    assert EstimateConfig().estimator in ESTIMATORS


def _gaussian_pairs(mu: float, pairs: int = 300, n: int = 100, seed: int = 0) -> tuple:
    rng = np.random.default_rng(seed)
    return rng.normal(mu, 1.0, (pairs, n)), rng.normal(0.0, 1.0, (pairs, n))


@pytest.mark.parametrize("name", ["auc", "std", "paired"])
@pytest.mark.parametrize("mu", [0.0, 0.5, 1.5, -1.0])
def test_unbiased_estimators_give_mu_back(name: str, mu: float) -> None:
    x, y = _gaussian_pairs(mu, seed=int(10 * mu) + 100)
    est = ESTIMATOR_FNS[name](x, y, 1)
    assert abs(est.mean() - mu) < BIAS_BOUND
    assert est.std() < SPREAD_BOUND


def test_alg2_is_biased_away_from_zero_at_mu_zero() -> None:
    x, y = _gaussian_pairs(0.0, seed=7)
    magnitude = np.abs(ESTIMATOR_FNS["alg2"](x, y, 1)).mean()
    assert ALG2_NULL_MAGNITUDE[0] < magnitude < ALG2_NULL_MAGNITUDE[1]
    np.testing.assert_array_equal(ESTIMATOR_FNS["alg2"](x, y, 1), influence_alg2(x, y))


def test_auc_equals_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(1)
    x = np.round(rng.normal(0.3, 1.0, (20, 9)), 1)
    y = np.round(rng.normal(0.0, 1.0, (20, 13)), 1)
    x[0] = 2.0
    y[0] = 2.0  # all tied: AUC 1/2
    ref = [
        np.mean((a[:, None] > b[None, :]) + 0.5 * (a[:, None] == b[None, :])) for a, b in zip(x, y)
    ]
    np.testing.assert_allclose(auc_with(x, y), ref, atol=EXACT)
    assert auc_with(x, y)[0] == 0.5


def test_std_and_paired_equal_their_formulas() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(5, 12)), rng.normal(size=(5, 12))
    for i in range(5):
        pooled = np.sqrt((np.var(x[i], ddof=1) + np.var(y[i], ddof=1)) / 2)
        assert ESTIMATOR_FNS["std"](x, y, 1)[i] == pytest.approx(
            (x[i].mean() - y[i].mean()) / pooled
        )
        d = x[i] - y[i]
        want = np.sqrt(2) * d.mean() / d.std(ddof=1)
        assert ESTIMATOR_FNS["paired"](x, y, 1)[i] == pytest.approx(want)


def test_constant_rows_are_finite() -> None:
    x = np.ones((2, 6))
    y = np.ones((2, 6))
    y[1] = 0.0
    for name, fn in ESTIMATOR_FNS.items():
        out = fn(x, y, 1)
        assert np.all(np.isfinite(out)), name
        if name != "alg2":  # alg2 is not antisymmetric: equal samples give the clip's value
            assert out[0] == pytest.approx(0.0, abs=1e-9), name


# ---- bootstrap ---------------------------------------------------------------------------


def test_bootstrap_columns_are_blocks_of_whole_checkpoints() -> None:
    rng = np.random.default_rng(3)
    c, r, length = 10, 3, 3
    cols = null.bootstrap_columns(c, r, 50, rng, block=length)
    assert cols.shape == (50, c * r)
    ckpt = cols.reshape(50, c, r) // r
    assert np.all(ckpt == ckpt[:, :, :1])  # the R pairs of a checkpoint travel together
    assert np.all(cols.reshape(50, c, r) % r == np.arange(r))
    step = (ckpt[:, 1:, 0] - ckpt[:, :-1, 0]) % c
    assert np.all(step[:, : length - 1] == 1)  # the first block is consecutive (circularly)


def test_bootstrap_se_equals_a_loop_over_draws(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(4)
    x, y = rng.normal(0.5, 1, (7, 12)), rng.normal(0, 1, (7, 12))
    cols = null.bootstrap_columns(6, 2, 25, rng)
    fn = ESTIMATOR_FNS["auc"]
    ref = [
        np.std([fn(x[i : i + 1, c], y[i : i + 1, c], 2)[0] for c in cols], ddof=1) for i in range(7)
    ]
    monkeypatch.setattr(null, "CHUNK_ELEMS", 100)  # several chunks
    np.testing.assert_allclose(null.bootstrap_se(x, y, fn, 2, cols), ref, atol=EXACT)


@pytest.mark.parametrize("name", ["std", "paired"])
def test_moment_forms_equal_explicit_draws(name: str) -> None:
    # std and paired draws come from sums (matrix products): against the explicit samples.
    rng = np.random.default_rng(14)
    x, y = rng.normal(0.5, 1, (6, 16)) + 3.0, rng.normal(0, 2, (6, 16)) + 3.0
    fn = ESTIMATOR_FNS[name]
    cols = null.bootstrap_columns(8, 2, 30, rng)
    draws = np.array([[fn(x[i : i + 1, c], y[i : i + 1, c], 2)[0] for c in cols] for i in range(6)])
    np.testing.assert_allclose(
        null.bootstrap_se(x, y, fn, 2, cols), draws.std(axis=1, ddof=1), rtol=MOMENTS
    )
    swaps = null.swap_masks(16, 20, rng)
    ref = np.array(
        [
            [fn(np.where(s, y[i], x[i])[None], np.where(s, x[i], y[i])[None], 2)[0] for s in swaps]
            for i in range(6)
        ]
    )
    np.testing.assert_allclose(null.permutation_null(x, y, fn, 2, swaps), ref, rtol=MOMENTS)


def test_bootstrap_se_matches_the_spread_over_replicates() -> None:
    # iid samples: block length 1 is the ordinary bootstrap, which estimates the sd of the
    # estimator over fresh samples.
    x, y = _gaussian_pairs(0.8, pairs=200, n=60, seed=5)
    fn = ESTIMATOR_FNS["std"]
    cols = null.bootstrap_columns(60, 1, 200, np.random.default_rng(6), block=1)
    se = null.bootstrap_se(x, y, fn, 1, cols)
    spread = fn(x, y, 1).std()
    assert se.mean() == pytest.approx(spread, rel=0.2)


# ---- permutation null and p-values -------------------------------------------------------


def test_permutation_null_equals_a_loop_over_swaps(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(7)
    x, y = rng.normal(0.5, 1, (6, 10)), rng.normal(0, 1, (6, 10))
    swaps = null.swap_masks(10, 15, rng)
    fn = ESTIMATOR_FNS["alg2"]
    ref = np.array(
        [
            [fn(np.where(s, y[i], x[i])[None], np.where(s, x[i], y[i])[None], 1)[0] for s in swaps]
            for i in range(6)
        ]
    )
    monkeypatch.setattr(null, "CHUNK_ELEMS", 50)
    np.testing.assert_allclose(null.permutation_null(x, y, fn, 1, swaps), ref, atol=EXACT)


def test_pvalues_count_the_observed_value_in() -> None:
    obs = np.array([2.0, 0.0, -2.0])
    draws = np.array([[-1.0, 0.0, 1.0, 3.0]] * 3)
    np.testing.assert_allclose(null.permutation_pvalues(obs, draws, "greater"), [2 / 5, 4 / 5, 1.0])
    np.testing.assert_allclose(null.permutation_pvalues(obs, draws, "less"), [4 / 5, 3 / 5, 1 / 5])
    np.testing.assert_allclose(null.permutation_pvalues(obs, draws, "two-sided"), [0.8, 1.0, 0.4])


@pytest.mark.parametrize("name", ["alg2", "auc", "std", "paired"])
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_permutation_test_equals_pvalues_of_the_whole_null(
    name: str, alternative: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the chunked test (paired: from sums of D alone) against the (P, K) null held whole
    rng = np.random.default_rng(21)
    x, y = rng.normal(0.3, 1, (9, 12)), rng.normal(0, 1, (9, 12))
    x[:3] += 1.5  # rows with an effect either way, so that small p-values occur
    x[3:6] -= 1.8
    swaps = null.swap_masks(12, 40, rng)
    fn = ESTIMATOR_FNS[name]
    whole = null.permutation_pvalues(
        fn(x, y, 2), null.permutation_null(x, y, fn, 2, swaps), alternative
    )
    monkeypatch.setattr(null, "CHUNK_ELEMS", 60)  # several chunks of rows
    np.testing.assert_array_equal(null.permutation_test(x, y, fn, 2, swaps, alternative), whole)
    assert whole.min() < 0.1 < whole.max()


def test_paired_permutation_test_counts_ties_of_the_sum() -> None:
    # integer contrasts: many draws tie with the observed sum; a tie counts as extreme
    rng = np.random.default_rng(22)
    d = rng.integers(-2, 3, (30, 8))
    swaps = null.swap_masks(8, 99, rng)
    signs = np.where(swaps, -1, 1)
    ref = []
    for row in d:
        obs, draws = int(row.sum()), [int((s * row).sum()) for s in signs]
        ge = (1 + sum(t >= obs for t in draws)) / 100
        le = (1 + sum(t <= obs for t in draws)) / 100
        ref.append(min(1.0, 2 * min(ge, le)))
    x, y = d.astype(np.float64), np.zeros(d.shape)
    got = null.permutation_test(x, y, ESTIMATOR_FNS["paired"], 1, swaps, "two-sided")
    np.testing.assert_allclose(got, ref, rtol=1e-12)


def _null_signals(rows: int, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """X, Y exchangeable within each pair (no effect), with a trend and a shared
    per-checkpoint component as in real signals."""
    rng = np.random.default_rng(seed)
    common = rng.normal(0, 1, (rows, n)) + np.linspace(3, 0, n)
    scale = rng.uniform(0.5, 2.0, (rows, 1))
    return common + scale * rng.normal(size=(rows, n)), common + scale * rng.normal(size=(rows, n))


@pytest.mark.parametrize("name", ["std", "paired", "auc"])
def test_null_pvalues_are_uniform(name: str) -> None:
    x, y = _null_signals(1500, 30, seed=8)
    fn = ESTIMATOR_FNS[name]
    swaps = null.swap_masks(30, 199, np.random.default_rng(9))
    p = null.permutation_pvalues(fn(x, y, 1), null.permutation_null(x, y, fn, 1, swaps), "greater")
    assert stats.kstest(p, "uniform").pvalue > KS_LEVEL


def test_alg2_null_pvalues_are_valid() -> None:
    # alg2 takes few distinct values, so its p-values have ties: they must not be
    # anti-conservative (P(p <= a) <= a) though they need not be uniform.
    x, y = _null_signals(600, 20, seed=10)
    fn = ESTIMATOR_FNS["alg2"]
    swaps = null.swap_masks(20, 99, np.random.default_rng(11))
    p = null.permutation_pvalues(
        fn(x, y, 1), null.permutation_null(x, y, fn, 1, swaps), "two-sided"
    )
    for a in (0.05, 0.1, 0.2):
        assert np.mean(p <= a) <= a + 2.5 * np.sqrt(a * (1 - a) / p.size)


# ---- Benjamini-Hochberg ------------------------------------------------------------------


def _bh_loop(p: np.ndarray, q: float) -> np.ndarray:
    m = p.size
    ranked = np.sort(p)
    passing = [k for k in range(1, m + 1) if ranked[k - 1] <= k * q / m]
    cut = ranked[max(passing) - 1] if passing else -1.0
    return p <= cut


def test_benjamini_hochberg_equals_its_definition() -> None:
    rng = np.random.default_rng(12)
    for _ in range(20):
        p = np.concatenate([rng.uniform(size=40), rng.uniform(0, 0.01, size=rng.integers(0, 10))])
        sel, adj = null.benjamini_hochberg(p, 0.1)
        np.testing.assert_array_equal(sel, _bh_loop(p, 0.1))
        assert np.all(adj >= p - EXACT) and np.all(adj <= 1)


def test_bh_keeps_the_false_discovery_rate_and_reports_power() -> None:
    q, reps, n_null, n_effect, n = 0.1, 12, 400, 100, 30
    fn = ESTIMATOR_FNS["paired"]
    swaps = null.swap_masks(n, 499, np.random.default_rng(13))
    fdp, power = [], []
    for rep in range(reps):
        x, y = _null_signals(n_null + n_effect, n, seed=100 + rep)
        x[n_null:] += 1.5  # planted effects: S raises its sample
        p = null.permutation_pvalues(
            fn(x, y, 1), null.permutation_null(x, y, fn, 1, swaps), "two-sided"
        )
        sel, _ = null.benjamini_hochberg(p, q)
        fdp.append(sel[:n_null].sum() / max(sel.sum(), 1))
        power.append(sel[n_null:].mean())
    print(f"BH at q={q}: mean FDP {np.mean(fdp):.3f}, power {np.mean(power):.3f}")
    assert np.mean(fdp) <= q + 0.03
    assert np.mean(power) > 0.5


def test_min_selectable() -> None:
    # p >= 1/(K+1): with 4000 hypotheses, K = 199, q = 0.05, BH needs 400 small p-values.
    assert null.min_selectable(4000, 199, 0.05) == 400
    assert null.min_selectable(4000, 199, 0.05, "two-sided") == 800
    assert null.min_selectable(10, 999, 0.05) == 1


# ---- the estimate / rank / evaluate tradeoff stages ---------------------------------------


def _signals(path: Path) -> Result:
    return load_artifact(str(path), "signals")


def test_default_estimate_reproduces_its_estimator_exactly(tiny_signals: Path) -> None:
    art = _signals(tiny_signals)
    sig = signal_view(art)
    x, y = self_samples(sig)
    arrays, meta = parts(
        estimate.run(art, "fine", estimate.EstimateOptions(bootstrap=0, permutations=0))
    )
    # the default: rb on the checkpoints up to the held-out loss minimum (--checkpoints auto)
    window = first_checkpoints(sig, resolve_window(sig, "auto") or sig.n_checkpoints)
    want = influence_rb(*self_moments(window))
    assert DEFAULT_ESTIMATOR == "rb" and meta["checkpoints_used"] == window.n_checkpoints
    np.testing.assert_array_equal(arrays["scores"][0], want)
    assert meta["estimator"] == DEFAULT_ESTIMATOR and "stderr" not in arrays
    alg2, meta2 = parts(estimate.run(art, "fine", estimate.EstimateOptions("alg2", None, 0, 0)))
    np.testing.assert_array_equal(alg2["scores"][0], influence_alg2(x, y))  # the paper's, as is
    assert "clip" in meta2


def test_stderr_pvalues_and_truncation(tiny_signals: Path) -> None:
    art = _signals(tiny_signals)
    opts = estimate.EstimateOptions("auc", checkpoints=2, bootstrap=30, permutations=40, seed=3)
    arrays, meta = parts(estimate.run(art, "fine", opts))
    n = art["train_index"].shape[0]
    assert arrays["stderr"].shape == arrays["pvalue"].shape == (1, n)
    # 2 checkpoints x 2 probe pairs = 4 samples, too few for a standard error: nan, and why
    assert np.all(np.isnan(arrays["stderr"])) and "at least 10" in meta["undefined"]["stderr"]
    assert np.all((arrays["pvalue"] > 0) & (arrays["pvalue"] <= 1))
    sig = first_checkpoints(signal_view(art), 2)
    x, y = self_samples(sig)
    np.testing.assert_array_equal(arrays["scores"][0], ESTIMATOR_FNS["auc"](x, y, sig.n_repeats))
    assert meta["checkpoints_used"] == 2 and meta["permutations"]["draws"] == 40
    again, _ = parts(estimate.run(art, "fine", opts))
    np.testing.assert_array_equal(again["pvalue"], arrays["pvalue"])  # seeded
    tracin, _ = parts(estimate.run(art, "tracin", opts))
    assert "pvalue" not in tracin  # f-INE only


@pytest.mark.parametrize(
    ("opts", "words"),
    [
        ({"estimator": "median"}, "unknown estimator"),
        ({"checkpoints": 99}, "checkpoints is 99"),
        ({"alternative": "both"}, "unknown alternative"),
        ({"bootstrap": 1}, "bootstrap"),
    ],
)
def test_bad_options_are_refused(tiny_signals: Path, opts: dict, words: str) -> None:
    with pytest.raises(FineError, match=words):
        estimate.run(_signals(tiny_signals), "fine", estimate.EstimateOptions(**opts))


def test_test_mode_statistics_have_query_by_subset_shape() -> None:
    from tests.test_estimators import _random_setting, _signals_from_gradients

    g, tg, probe, lr = _random_setting(20, n=9, m=3)
    sig = _signals_from_gradients(g, tg, probe, lr)
    out = fine_statistics(sig, estimate.EstimateOptions("std", None, 20, 20))
    assert out["scores"].shape == out["stderr"].shape == out["pvalue"].shape == (3, 9)
    x, y = query_samples(sig)
    np.testing.assert_allclose(out["scores"][1], ESTIMATOR_FNS["std"](x[1], y[1], 2), atol=EXACT)


def test_rank_fdr_selects_and_prints(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "influence.npz"
    rk = tmp_path / "ranking.npz"
    res = runner.invoke(
        app,
        [
            "estimate",
            str(tiny_signals),
            "--estimator",
            "paired",
            "--permutations",
            "99",
            "-o",
            str(inf),
        ],
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(
        app, ["rank", str(inf), "--fdr", "0.2", "--null", "zero", "--top", "5", "-o", str(rk)]
    )
    assert res.exit_code == 0, res.output
    assert "selected" in res.output and "stderr" in res.output and "qvalue" in res.output
    ranking = load_artifact(str(rk), "ranking")
    influence = load_artifact(str(inf), "influence")
    sel, adj = null.benjamini_hochberg(influence["pvalue"][0], 0.2)
    np.testing.assert_array_equal(ranking["selected"], sel[ranking["order"]])
    np.testing.assert_allclose(ranking["qvalue"], adj[ranking["order"]])
    assert ranking.meta["fdr"]["selected"] == int(sel.sum())
    csv_out = runner.invoke(app, ["rank", str(inf), "--format", "csv", "--top", "3"]).stdout
    assert csv_out.splitlines()[0].endswith("stderr,pvalue")


def test_rank_fdr_without_pvalues_is_refused(tiny_signals: Path, tmp_path: Path) -> None:
    inf = tmp_path / "influence.npz"
    runner.invoke(app, ["estimate", str(tiny_signals), "--method", "tracin", "-o", str(inf)])
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.05"])
    assert res.exit_code == 2 and "p-values" in res.output


def test_tradeoff_curve_and_plot(tiny_signals: Path, tmp_path: Path) -> None:
    png = tmp_path / "tradeoff.png"
    res = runner.invoke(
        app,
        ["evaluate", "tradeoff", str(tiny_signals), "--subset", "3", "--plot", str(png), "--json"],
    )
    assert res.exit_code == 0, res.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads(res.stdout)
    alpha, beta = np.array(curve["alpha"]), np.array(curve["beta"])
    assert alpha[0] == 0 and beta[0] == 1 and alpha[-1] == 1 and beta[-1] == 0
    assert np.all(np.diff(alpha) >= 0) and np.all(np.diff(beta) <= 0)
    sig = signal_view(_signals(tiny_signals))
    x, y = self_samples(sig)
    for name, mu in curve["mu"].items():
        assert mu == pytest.approx(ESTIMATOR_FNS[name](x[3:4], y[3:4], sig.n_repeats)[0])
    bad = runner.invoke(
        app, ["evaluate", "tradeoff", str(tiny_signals), "--subset", "10000", "--plot", str(png)]
    )
    assert bad.exit_code == 2 and "out of range" in bad.output


def test_empirical_tradeoff_of_separated_samples() -> None:
    from fine_cli.stages.tradeoff import empirical_tradeoff, gaussian_tradeoff

    x, y = np.arange(5.0, 10.0), np.arange(0.0, 5.0)  # S helps: X above Y
    alpha, beta = empirical_tradeoff(x, y, helps=True)
    assert np.any((alpha == 0) & (beta == 0))  # a perfect test exists
    grid = np.linspace(0, 1, 11)
    np.testing.assert_allclose(gaussian_tradeoff(grid, 0.0), 1 - grid, atol=1e-12)
