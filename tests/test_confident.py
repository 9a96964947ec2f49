"""Confident learning (method confident): out-of-fold probabilities from K fold models,
scored by cleanlab's label quality; against slow twins and cleanlab's own functions."""

from __future__ import annotations

import numpy as np
import pytest
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

import fine_cli
from fine_cli.crossval import stratified_folds
from fine_cli.estimators.confident import confident, label_quality
from fine_cli.estimators.samples import SignalView
from fine_cli.report import charged
from fine_cli.stages.experiment import SeedRun

TINY = {
    "data": {"dataset": "synthetic", "label_noise": 0.2, "synthetic": {"n_samples": 300}},
    "model": {"arch": "mlp", "hidden": [12]},
    "train": {"epochs": 4, "batch_size": 20, "lr": 0.01, "device": "cpu"},
    "collect": {"crossval": {"folds": 3}},
    "experiment": {"methods": ["fine", "tracin", "confident"]},
}


def _probs(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    p = rng.dirichlet(np.ones(k) * 0.5, size=n)
    return p.astype(np.float32)


def _view(labels: np.ndarray, probs: np.ndarray, groups: list[list[int]] | None = None):
    n = labels.shape[0]
    sig = SignalView(
        mode="self",
        lr=np.ones(1),
        probe_idx=np.zeros((1, 1, 2, 1), np.int64),
        sqnorm=np.ones((1, 1, n)),
        ip=np.zeros((1, 1, 1, 2, n)),
        probe_sqnorm=np.zeros((1, 1, 1, 2)),
        loss=np.zeros((1, 1, n)),
        margin=np.zeros((1, 1, n)),
        labels=labels,
        oof_probs=probs,
    )
    if groups is not None:
        sig.group_ptr = np.cumsum([0] + [len(g) for g in groups])
        sig.group_members = np.concatenate(groups)
    return sig


def test_score_is_one_minus_self_confidence_by_a_loop_and_by_cleanlab() -> None:
    rng = np.random.default_rng(0)
    probs = _probs(rng, 50, 4)
    labels = rng.integers(0, 4, 50)
    got = confident(_view(labels, probs))[0]
    p = probs.astype(np.float64) / probs.astype(np.float64).sum(1, keepdims=True)
    loop = np.array([1.0 - p[i, labels[i]] for i in range(50)])  # the slow twin
    np.testing.assert_allclose(got, loop, rtol=1e-12)
    np.testing.assert_allclose(got, 1.0 - get_label_quality_scores(labels, p), rtol=1e-12)


def test_the_top_of_the_ranking_is_what_cleanlab_flags_first() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 300)
    probs = np.full((300, 3), 0.05)
    probs[np.arange(300), labels] = 0.9
    wrong = rng.choice(300, 30, replace=False)
    probs[wrong] = 0.05
    probs[wrong, (labels[wrong] + 1) % 3] = 0.9
    probs += rng.uniform(0, 0.01, probs.shape)
    probs /= probs.sum(1, keepdims=True)
    score = label_quality(labels, probs)
    flagged = find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    assert set(flagged) == set(wrong)
    assert set(np.argsort(score)[:30]) == set(wrong)


def test_a_subset_scores_the_mean_of_its_members() -> None:
    rng = np.random.default_rng(2)
    probs, labels = _probs(rng, 10, 3), rng.integers(0, 3, 10)
    single = confident(_view(labels, probs))[0]
    groups = [[0, 1, 2], [5], [3, 9]]
    got = confident(_view(labels, probs, groups))[0]
    np.testing.assert_allclose(got, [single[g].mean() for g in groups], rtol=1e-12)


def test_folds_are_stratified_and_cover_every_point_once() -> None:
    labels = np.repeat(np.arange(4), [30, 31, 29, 10])
    fold = stratified_folds(labels, 5, np.random.default_rng(0))
    assert fold.min() == 0 and fold.max() == 4
    for c in range(4):
        counts = np.bincount(fold[labels == c], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_train_collect_trains_the_folds_only_when_listed_reproducibly() -> None:
    sig = fine_cli.train_collect(TINY)
    probs, fold = sig["oof_probs"], sig["oof_fold"]
    assert probs.shape == (sig.n_train, 3) and set(np.unique(fold)) == {0, 1, 2}
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-5)
    assert sig.meta["crossval"]["folds"] == 3 and sig.meta["timing"]["crossval_s"] > 0
    again = fine_cli.train_collect(TINY)
    np.testing.assert_array_equal(again["oof_probs"], probs)
    scores = fine_cli.estimate(sig, "confident").scores[0]
    p64 = probs.astype(np.float64)
    want = 1.0 - get_label_quality_scores(sig["labels"], p64 / p64.sum(1, keepdims=True))
    np.testing.assert_allclose(scores, want, rtol=1e-12)
    # flipped labels rank high: out-of-fold models never saw them
    report = fine_cli.evaluate_recall([fine_cli.rank(fine_cli.estimate(sig, "confident"))])
    assert report.rankings[0].auroc > 0.8
    plain = fine_cli.train_collect(TINY, ["experiment.methods=[fine,tracin]"])
    assert "oof_probs" not in plain
    with pytest.raises(fine_cli.InputFileError, match="confident"):
        fine_cli.estimate(plain, "confident")


def test_test_mode_is_refused_with_the_reason() -> None:
    sig = _view(np.zeros(3, np.int64), np.full((3, 2), 0.5, np.float32))
    sig.mode = "test"
    with pytest.raises(fine_cli.ConfigError, match="self mode"):
        confident(sig)


def test_the_report_charges_confident_its_folds_only() -> None:
    run = SeedRun(0, "d", False, 10.0, 4.0, 0.0, {}, {}, crossval_s=7.5, models=1)
    assert charged("confident", run) == (7.5, 0.0)
    assert charged("tracin", run) == (10.0, 4.0)  # the main model alone: all of it
    two = SeedRun(0, "d", False, 10.0, 4.0, 0.0, {}, {}, models=2)
    assert charged("tracin", two) == (5.0, 2.0)
