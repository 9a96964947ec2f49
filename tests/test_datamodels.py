"""Test-mode retraining truths: LDS, mu_true(q, G), the balanced design, reliability."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from typer.testing import CliRunner

from fine_cli import datamodels
from fine_cli.cli import app
from tests.conftest import write_config


def _setting(m_models: int = 64, n_groups: int = 30, m: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    design = datamodels.balanced_design(m_models, n_groups, rng)
    weights = rng.normal(size=(m, n_groups))
    return rng, design, weights


def test_balanced_design_puts_each_group_in_half_of_each_half() -> None:
    design = datamodels.balanced_design(16, 9, np.random.default_rng(1))
    assert design.shape == (16, 9) and design.dtype == bool
    np.testing.assert_array_equal(design[:8].sum(axis=0), 4)
    np.testing.assert_array_equal(design[8:].sum(axis=0), 4)
    with pytest.raises(ValueError, match="multiple of 4"):
        datamodels.balanced_design(10, 3, np.random.default_rng(0))


def test_point_mask_follows_group_membership() -> None:
    design = np.array([[True, False, True], [False, True, False]])
    ptr, members = np.array([0, 2, 3, 5]), np.array([4, 0, 1, 2, 3])
    got = datamodels.point_mask(design, ptr, members, 6)
    want = np.zeros((2, 6), bool)
    for mi in range(2):
        for g in range(3):
            if design[mi, g]:
                want[mi, members[ptr[g] : ptr[g + 1]]] = True
    np.testing.assert_array_equal(got, want)


def test_lds_of_a_linear_datamodel_is_one_and_of_shuffled_weights_about_zero() -> None:
    rng, design, w = _setting()
    outcome = design.astype(float) @ w.T  # exactly additive in the groups
    np.testing.assert_allclose(datamodels.lds(w, design, outcome), 1.0)
    shuffled = np.stack([rng.permutation(row) for row in w])
    assert abs(np.mean(datamodels.lds(shuffled, design, outcome))) < 0.15


def test_a_planted_shift_comes_back_in_mu_true() -> None:
    rng, design, _ = _setting(m_models=64, n_groups=20, m=3)
    outcome = rng.normal(size=(64, 3))
    outcome[:, 1] += 1.0 * design[:, 7]  # group 7 helps test point 1 by one noise sd
    mu = datamodels.group_truth(outcome, design)
    assert mu.shape == (3, 20)
    assert mu[1, 7] > 0.8 and np.argmax(mu[1]) == 7
    # elsewhere no effect: mu ~ N(0, ~2/32), nothing near the planted value
    assert np.abs(np.delete(mu[1], 7)).max() < 0.8 and np.abs(mu[0]).max() < 0.8


def test_group_truth_equals_a_loop_over_pairs() -> None:
    rng, design, _ = _setting(m_models=8, n_groups=5, m=2)
    outcome = rng.normal(size=(8, 2))
    got = datamodels.group_truth(outcome, design)
    for q in range(2):
        for g in range(5):
            a, b = outcome[design[:, g], q], outcome[~design[:, g], q]
            auc = np.mean([(x > y) + 0.5 * (x == y) for x in a for y in b])
            auc = np.clip(auc, 0.5 / 16, 1 - 0.5 / 16)
            assert got[q, g] == pytest.approx(np.sqrt(2) * stats.norm.ppf(auc))


def test_split_half_reliability_tells_signal_from_noise() -> None:
    rng, design, w = _setting(m_models=128, n_groups=20, m=10)
    noise = rng.normal(size=(128, 10))
    strong = datamodels.split_half_reliability(3.0 * design @ w.T + noise, design)
    none = datamodels.split_half_reliability(noise, design)
    # the other groups' effects are noise for each group: a reliability near 0.75 here
    assert strong["split_half"] > 0.6 and strong["full_m"] >= strong["split_half"]
    assert abs(none["split_half"]) < 0.2


def test_validate_in_test_mode_prints_lds_and_mu_true_per_method(tmp_path: Path) -> None:
    cfg = write_config(
        tmp_path / "cfg.yaml",
        {
            "collect.mode": "test",
            "collect.test_points.n": 6,
            "validation.models": 8,
            "validation.group_size": 20,
            "experiment.seeds": [0],
            "experiment.methods": ["fine", "tracin"],
            "train.epochs": 2,
        },
    )
    truth = tmp_path / "truth.npz"
    res = CliRunner().invoke(
        app, ["validate", str(cfg), "--json", "-q", "--save-truth", str(truth)]
    )
    assert res.exit_code == 0, res.output
    report = json.loads(res.output[res.output.index("{") :])
    labels = [m["label"] for m in report["methods"]]
    assert "fine/paired" in labels and "tracin" in labels
    assert report["n_groups"] == report["n_train"] // 20 and report["n_test"] == 6
    for m in report["methods"]:
        assert set(m["mean"]) == {"lds", "spearman_mu", "relative", "cost"}
        assert m["mean"]["cost"] > 0
    # the saved truth is reused without retraining
    again = CliRunner().invoke(app, ["validate", str(cfg), "--truth", str(truth), "-q"])
    assert again.exit_code == 0 and "LDS" in again.output
