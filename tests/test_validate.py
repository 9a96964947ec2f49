"""``fine validate``: the retraining ground truth against slow twins, and a planted point."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from typer.testing import CliRunner

from fine_cli.artifacts import load_artifact
from fine_cli.cli import app
from fine_cli.stages import validate
from tests.conftest import write_config

runner = CliRunner()
EXACT = 1e-10


def test_balanced_halves_put_every_point_in_half_the_models() -> None:
    mask = validate.balanced_halves(16, 300, np.random.default_rng(0))
    assert mask.shape == (16, 300)
    assert np.all(mask.sum(axis=0) == 8)
    assert np.all(np.abs(mask.sum(axis=1) - 150) < 60)  # each model sees about half


def test_logit_confidence_is_log_odds_of_the_label() -> None:
    logits = torch.randn(50, 4, dtype=torch.float64)
    y = torch.randint(0, 4, (50,))
    p = torch.softmax(logits, dim=1).gather(1, y[:, None]).squeeze(1)
    want = torch.log(p) - torch.log1p(-p)
    torch.testing.assert_close(validate.logit_confidence(logits, y), want)


def test_truth_equals_per_point_mann_whitney() -> None:
    rng = np.random.default_rng(1)
    m, n = 12, 40
    mask = validate.balanced_halves(m, n, rng)
    loss = rng.exponential(1.0, (m, n)) * np.where(mask, 0.5, 1.0)  # in-models: lower loss
    loss[:, 0] = 1.0  # all tied: AUC 1/2, mu_true 0
    conf = rng.normal(size=(m, n)) + mask
    got = validate.truth_from_samples(loss, conf, mask)
    cap = 0.5 / 36
    for i in range(n):
        lin, lout = loss[mask[:, i], i], loss[~mask[:, i], i]
        auc = stats.mannwhitneyu(lout, lin).statistic / (lin.size * lout.size)
        mu = np.sqrt(2) * stats.norm.ppf(np.clip(auc, cap, 1 - cap))
        assert got["mu_true"][i] == pytest.approx(mu, abs=EXACT)
        assert got["mean_diff"][i] == pytest.approx(lout.mean() - lin.mean(), abs=EXACT)
        cin, cout = conf[mask[:, i], i], conf[~mask[:, i], i]
        pooled = np.sqrt((cin.var(ddof=1) + cout.var(ddof=1)) / 2)
        assert got["mu_lira"][i] == pytest.approx((cin.mean() - cout.mean()) / pooled, abs=EXACT)
    assert got["mu_true"][0] == 0.0
    assert np.mean(got["mu_true"] > 0) > 0.8  # the planted direction: in-models fit better


def test_validate_recovers_a_planted_influential_point(tmp_path: Path) -> None:
    # One flipped label in the tiny synthetic set is the planted point: a model that trains
    # on it memorises it, one that does not predicts its true class.
    cfg = write_config(
        tmp_path / "tiny.yaml",
        {
            "data.label_noise": 0.005,
            "train.epochs": 20,
            "collect.probe_repeats": 2,
            "experiment.seeds": [0, 1],
            "experiment.methods": ["fine", "tracin"],
        },
    )
    truth_path = tmp_path / "truth.npz"
    report_path = tmp_path / "report.json"
    args = ["validate", str(cfg), "--models", "12", "-q", "--save-truth", str(truth_path)]
    res = runner.invoke(app, [*args, "--json", "-o", str(report_path)])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert json.loads(report_path.read_text()) == report
    truth = load_artifact(str(truth_path), "truth")
    flip = truth["flip_mask"]
    assert flip.sum() == 1
    mu = truth["mu_true"]
    assert mu[flip][0] == pytest.approx(report["truth"]["mu_true_cap"])  # fully separated
    assert np.mean(mu >= mu[flip][0] - 1e-9) < 0.1  # at the very top of the truth
    rows = {m["label"]: m for m in report["methods"]}
    assert set(rows) == {"fine/alg2", "fine/auc", "fine/std", "fine/paired", "fine/rb", "tracin"}
    assert rows["fine/paired"]["mean"]["auroc"] > 0.95  # f-INE finds the planted point too
    assert all(len(m["spearman_mu"]) == 2 and m["jaccard"] is not None for m in rows.values())


def test_a_saved_truth_is_reused(tmp_path: Path, tiny_signals: Path) -> None:
    cfg = write_config(tmp_path / "tiny.yaml")
    truth = tmp_path / "truth.npz"
    common = ["--signals", str(tiny_signals), "-q", "--json"]
    first = runner.invoke(
        app, ["validate", str(cfg), "--models", "4", "--save-truth", str(truth), *common]
    )
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, ["validate", str(cfg), "--truth", str(truth), *common])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == json.loads(first.stdout)
    assert json.loads(first.stdout)["methods"][0]["jaccard"] is None  # one run: no Jaccard


def test_validate_refuses_signals_of_other_data(tmp_path: Path, tiny_signals: Path) -> None:
    cfg = write_config(tmp_path / "tiny.yaml", {"data.label_noise": 0.05})
    res = runner.invoke(
        app, ["validate", str(cfg), "--models", "4", "-q", "--signals", str(tiny_signals)]
    )
    assert res.exit_code == 3 and "other training data" in res.output


def test_odd_model_count_is_refused(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "tiny.yaml")
    res = runner.invoke(app, ["validate", str(cfg), "--models", "5", "-q"])
    assert res.exit_code == 2 and "even" in res.output
