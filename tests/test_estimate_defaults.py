"""What `fine estimate` computes by default: rb scores with bootstrap standard errors
(three matrix products per block of subsets, against the explicit draws), and p-values
only on request (`--permutations`), which `rank --fdr --null zero` asks for by name."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from fine_cli.cli import app
from fine_cli.config import EstimateConfig
from fine_cli.estimators import null
from fine_cli.estimators.fine import influence_rb
from fine_cli.estimators.fine_method import _rb_bootstrap_se
from fine_cli.estimators.options import EstimateOptions

runner = CliRunner()
# The draws' moments by matrix products against rb on each explicit draw (float64)
SE_RTOL = 1e-9


def rb_se_by_draws(m: np.ndarray, v: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """(P,) the slow twin: rb on every explicit draw (P, B, C) of checkpoints, its sd."""
    p, n_boot = m.shape[0], cols.shape[0]
    mb, vb = m[:, cols], v[:, cols]
    draws = influence_rb(mb.reshape(p * n_boot, -1), vb.reshape(p * n_boot, -1))
    return draws.reshape(p, n_boot).std(axis=1, ddof=1)


def test_rb_bootstrap_equals_the_explicit_draws() -> None:
    rng = np.random.default_rng(0)
    p, c = 300, 12
    m = rng.normal(0.5, 1.0, (p, c)) * rng.uniform(0.01, 100.0, (p, 1))
    v = rng.gamma(2.0, 1.0, (p, c)) * rng.uniform(0.01, 100.0, (p, 1))
    m[0], v[0] = 3.0, 0.0  # no spread at all: every draw's scale is floored
    m[1], v[1] = 0.0, 0.0  # nothing: the floor is SCALE_TINY
    m[2, :6], v[2] = 1e6, 0.0  # large mean, spread only between checkpoints
    m[3] = 1e8 + rng.normal(0.0, 1.0, c)  # a mean far above its spread: no cancellation
    cols = null.bootstrap_columns(c, 1, 200, np.random.default_rng(1))
    got, want = _rb_bootstrap_se(m, v, cols), rb_se_by_draws(m, v, cols)
    np.testing.assert_allclose(got, want, rtol=SE_RTOL, atol=0.0)
    assert np.all(np.isnan(_rb_bootstrap_se(m[:, :2], v[:, :2], cols[:, :2])))


def test_pvalues_are_computed_only_on_request(tiny_signals: Path, tmp_path: Path) -> None:
    assert EstimateConfig().permutations == 0 and EstimateOptions().permutations == 0
    inf = tmp_path / "influence.npz"
    res = runner.invoke(app, ["estimate", str(tiny_signals), "-o", str(inf)])
    assert res.exit_code == 0, res.output
    from fine_cli.artifacts import load_artifact

    influence = load_artifact(str(inf), "influence")
    assert "stderr" in influence and "pvalue" not in influence
    assert "permutations" not in influence.meta
    # the typical null (the default) reads the standard errors alone
    assert runner.invoke(app, ["rank", str(inf), "--fdr", "0.2", "--top", "3"]).exit_code == 0
    res = runner.invoke(app, ["rank", str(inf), "--fdr", "0.2", "--null", "zero"])
    assert res.exit_code == 2 and "--permutations" in res.output, res.output
    asked = tmp_path / "asked.npz"
    res = runner.invoke(
        app, ["estimate", str(tiny_signals), "--permutations", "49", "-o", str(asked)]
    )
    assert res.exit_code == 0, res.output
    assert load_artifact(str(asked), "influence").meta["permutations"]["draws"] == 49
    res = runner.invoke(app, ["rank", str(asked), "--fdr", "0.2", "--null", "zero"])
    assert res.exit_code == 0, res.output


def test_few_samples_warning_counts_what_each_estimator_averages(tiny_signals: Path) -> None:
    # rb's per-checkpoint moments integrate the probe pairs out: it is warned about too few
    # checkpoints, the sample estimators about too few checkpoints x probe pairs
    from fine_cli.artifacts import load_artifact
    from fine_cli.stages import estimate

    sig = load_artifact(str(tiny_signals), "signals")
    r = sig["probe_idx"].shape[1]
    assert sig.n_checkpoints >= null.MIN_SE_CHECKPOINTS and r < null.MIN_SE_SAMPLES

    def warned(**opts: object) -> list[str]:
        return estimate.run(sig, "fine", EstimateOptions(**opts)).meta.get("warnings", [])

    few = null.MIN_SE_CHECKPOINTS  # rb: enough checkpoints, fewer samples than paired wants
    assert few * r < null.MIN_SE_SAMPLES
    assert warned(checkpoints=few, bootstrap=0) == []
    (text,) = warned(checkpoints=few - 1, bootstrap=0)
    assert f"only {few - 1} checkpoint(s)" in text and "--checkpoints all" in text
    (text,) = warned(estimator="paired", checkpoints=few, bootstrap=0)
    assert f"only {few * r} samples per distribution" in text
