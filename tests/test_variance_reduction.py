"""The Rao-Blackwellised estimator rb, its moments, the collection that feeds it (main model
alone, probe batches' second moments, held-out loss, patience) and --checkpoints auto."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fine_cli
from fine_cli.collector import Collector
from fine_cli.estimators.fine import influence_paired, influence_rb
from fine_cli.estimators.samples import (
    SignalView,
    auto_window,
    query_moments,
    resolve_window,
    self_moments,
    self_samples,
)
from fine_cli.tasks import ClassificationTask

# float32 signals from a float64 model, against float64 autograd loops
RTOL, ATOL = 1e-5, 1e-8
# rb against paired with many probe pairs: the Monte Carlo error of R pairs per checkpoint
LIMIT_TOL = 0.05


def _view_from_gram(gram: np.ndarray, probe: np.ndarray) -> SignalView:
    """A main-model-only self-mode view whose per-checkpoint inner products are ``gram``
    (C, n, n), probe batches ``probe`` (C, R, 2, b)."""
    c, n, _ = gram.shape
    ci = np.arange(c)[:, None, None, None]
    cols = gram[ci, :, probe]  # (C, R, 2, b, n): <g(z_j), g(z)> for j in each batch
    sq = np.einsum("cnn->cn", gram)
    return SignalView(
        mode="self",
        lr=np.ones(c),
        probe_idx=probe,
        sqnorm=sq[None],
        ip=cols.sum(axis=3)[None],
        probe_sqnorm=np.zeros((1, *probe.shape[:3])),
        loss=np.zeros((1, c, n)),
        margin=np.zeros((1, c, n)),
        ip2=(cols**2).sum(axis=3),
    )


def _random_gram(rng: np.random.Generator, c: int, n: int, d: int) -> np.ndarray:
    g = rng.normal(size=(c, n, d)) * rng.uniform(0.5, 2.0, size=(c, n, 1))
    g[:, :3] += 2.0  # a few points aligned with each other: a clear mean alignment
    return np.einsum("cnd,cjd->cnj", g, g)


def _probes(rng: np.random.Generator, c: int, r: int, n: int, b: int) -> np.ndarray:
    return np.stack(
        [
            [[np.sort(rng.choice(n, b, replace=False)) for _ in range(2)] for _ in range(r)]
            for _ in range(c)
        ]
    )


def test_self_moments_equal_explicit_mean_and_variance_of_the_probe_points() -> None:
    rng = np.random.default_rng(0)
    c, n, b = 3, 20, 6
    gram = _random_gram(rng, c, n, 4)
    probe = _probes(rng, c, 2, n, b)
    m, v = self_moments(_view_from_gram(gram, probe))
    for ci in range(c):
        for z in range(n):
            others = [j for j in probe[ci].ravel() if j != z]  # with multiplicity
            a = gram[ci, z, others]
            s = gram[ci, z, z]
            f = (n - 1 - b) / (n - 2)
            want_m = (s - a.mean()) / (b + 1)
            want_v = a.var() * f * (b / (b + 1) ** 2 + 1 / b)
            assert m[z, ci] == pytest.approx(want_m, rel=1e-10, abs=1e-12)
            assert v[z, ci] == pytest.approx(want_v, rel=1e-10, abs=1e-12)


def test_rb_is_the_many_probe_pair_limit_of_paired() -> None:
    """With R probe pairs per checkpoint, paired's mean and variance of D converge to the
    moments that rb computes (from the same pairs' points); rb is their limit."""
    rng = np.random.default_rng(1)
    c, n, b, r = 3, 60, 8, 3000
    gram = _random_gram(rng, c, n, 5)
    sig = _view_from_gram(gram, _probes(rng, c, r, n, b))
    x, y = self_samples(sig)
    m, v = self_moments(sig)
    d = (x - y).reshape(n, c, r)
    np.testing.assert_allclose(d.mean(axis=2), m, atol=LIMIT_TOL * np.abs(m).max())
    np.testing.assert_allclose(d.var(axis=2), v, rtol=0.15, atol=1e-6 * v.max())
    np.testing.assert_allclose(influence_paired(x, y), influence_rb(m, v), atol=LIMIT_TOL)


def test_test_mode_moments_have_self_mode_on_their_diagonal() -> None:
    rng = np.random.default_rng(2)
    c, n, b = 3, 15, 4
    gram = _random_gram(rng, c, n, 4)
    probe = _probes(rng, c, 2, n, b)
    sig = _view_from_gram(gram, probe)
    test = SignalView(
        mode="test",
        lr=sig.lr,
        probe_idx=probe,
        sqnorm=sig.sqnorm,
        ip=sig.ip,
        probe_sqnorm=sig.probe_sqnorm,
        loss=sig.loss,
        margin=sig.margin,
        gram=gram[None].astype(np.float64),  # queries = the training points themselves
        test_ip=sig.ip,
        test_sqnorm=sig.sqnorm,
    )
    m_self, v_self = self_moments(sig)
    m_test, v_test = query_moments(test)  # (n, n, C)
    diag = np.arange(n)
    np.testing.assert_allclose(m_test[diag, diag], m_self, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v_test[diag, diag], v_self, rtol=1e-10, atol=1e-12)


def test_rb_finds_a_planted_self_effect_that_one_probe_pair_of_paired_misses() -> None:
    """Points whose self term is large against the noise of their alignments rank first."""
    rng = np.random.default_rng(3)
    c, n, b = 10, 200, 20
    g = rng.normal(size=(c, n, 8))
    g[:, :10] *= 4.0  # ten points with large gradients: large self terms
    gram = np.einsum("cnd,cjd->cnj", g, g)
    sig = _view_from_gram(gram, _probes(rng, c, 1, n, b))
    rb = influence_rb(*self_moments(sig))
    assert set(np.argsort(-rb)[:10]) == set(range(10))


# ---- collection: ip2, the main model alone, held-out loss, patience ----------------------


def _tiny_setup(seed: int = 0) -> tuple[nn.Module, nn.Module, torch.utils.data.TensorDataset]:
    torch.manual_seed(seed)
    x = torch.randn(40, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    make = lambda: nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()  # noqa: E731
    return make(), make(), torch.utils.data.TensorDataset(x, y)


def _explicit_grads(model: nn.Module, data: torch.utils.data.TensorDataset) -> torch.Tensor:
    """(n, d) per-sample loss gradients by a loop of autograd calls: the slow twin."""
    rows = []
    for xi, yi in data:
        model.zero_grad()
        nn.functional.cross_entropy(model(xi[None]), yi[None]).backward()
        rows.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    return torch.stack(rows)


def test_collector_ip2_equals_explicit_squared_inner_products() -> None:
    main, _, data = _tiny_setup()
    col = Collector(main, None, data, ClassificationTask(), probe_batch_size=6, seed=1)
    col.checkpoint(lr=0.1)
    arrays = col.arrays()
    g = _explicit_grads(main, data).numpy()
    probe = arrays["probe_idx"][0]  # (R, 2, b)
    want = np.stack([[((g @ g[probe[r, k]].T) ** 2).sum(1) for k in range(2)] for r in range(1)])
    assert arrays["sqnorm"].shape[0] == 1  # the main model alone
    np.testing.assert_allclose(arrays["ip2"][0], want, rtol=RTOL, atol=ATOL)


def test_collector_records_heldout_loss_and_stops_after_patience() -> None:
    main, _, data = _tiny_setup()
    held = torch.utils.data.TensorDataset(*data[:10])
    col = Collector(main, None, data, probe_batch_size=5, heldout=held, patience=2)
    losses = [0.9, 0.5, 0.6, 0.7, 0.4]
    for _ in losses:
        if col.stopped:
            break
        col.checkpoint(lr=0.1)
        col.heldout_loss[-1] = losses[len(col.heldout_loss) - 1]  # as if training moved
    # minimum at checkpoint 2, no improvement at 3 and 4: stopped after 4 of 5
    assert col.stopped and len(col.records) == 4
    assert col.arrays()["heldout_loss"].tolist() == losses[:4]
    with torch.no_grad():
        want = float(nn.functional.cross_entropy(main(data[:10][0]), data[:10][1]))
    fresh = Collector(main, None, data, probe_batch_size=5, heldout=held)
    fresh.checkpoint(lr=0.1)
    assert fresh.heldout_loss[0] == pytest.approx(want, rel=1e-10)


def test_auto_window_is_the_heldout_loss_minimum_and_falls_back_to_all() -> None:
    assert auto_window(np.array([1.0, 0.7, 0.8, 0.6, 0.9])) == 4
    sig = _view_from_gram(
        _random_gram(np.random.default_rng(0), 5, 10, 3),
        _probes(np.random.default_rng(0), 5, 1, 10, 3),
    )
    assert resolve_window(sig, "auto") is None  # no held-out loss recorded: all
    sig.heldout_loss = np.array([1.0, 0.7, 0.8, 0.6, 0.9])
    assert resolve_window(sig, "auto") == 4 and resolve_window(sig, 2) == 2
    assert resolve_window(sig, None) is None


TINY = {
    "data": {"dataset": "synthetic", "label_noise": 0.2, "synthetic": {"n_samples": 200}},
    "model": {"arch": "mlp", "hidden": [12]},
    "train": {"epochs": 4, "batch_size": 20, "lr": 0.01, "device": "cpu"},
}


def test_train_collect_by_default_trains_only_what_rb_reads() -> None:
    sig = fine_cli.train_collect(TINY)
    assert sig.meta["timing"]["models"] == 1 and sig["sqnorm"].shape[0] == 1
    assert "ip2" in sig and sig["heldout_loss"].shape == (sig.n_checkpoints,)
    inf = fine_cli.estimate(sig, "fine", bootstrap=20, permutations=49)
    assert inf.meta["estimator"] == "rb" and np.isfinite(inf.scores).all()
    assert inf.meta["checkpoints_used"] == auto_window(sig["heldout_loss"])
    assert np.all(inf["stderr"] > 0)
    # rb's p-values are paired's exact sign-flip test of D
    paired = fine_cli.estimate(sig, "fine", estimator="paired", bootstrap=0, permutations=49)
    np.testing.assert_array_equal(inf["pvalue"], paired["pvalue"])
    with pytest.raises(fine_cli.InputFileError, match=r"collect\.auxiliary=true"):
        fine_cli.estimate(sig, "fine", estimator="alg2")


def test_an_estimator_that_reads_o_hat_gets_the_auxiliary_model() -> None:
    cfg = fine_cli.load_config(TINY, ["estimate.estimator=alg2"])
    sig = fine_cli.train_collect(cfg)
    assert sig["sqnorm"].shape[0] == 2 and "ip2" not in sig
    main_only = fine_cli.train_collect(TINY)
    # the main model's signals do not depend on whether the auxiliary one was trained
    c = min(sig.n_checkpoints, main_only.n_checkpoints)
    np.testing.assert_array_equal(sig["sqnorm"][:1, :c], main_only["sqnorm"][:, :c])
    np.testing.assert_array_equal(sig["ip"][:1, :c], main_only["ip"][:, :c])


# ---- what the retraining truth itself resolves -------------------------------------------


def _truth(effect: np.ndarray, m: int, seed: int) -> fine_cli.Truth:
    """A truth of m models on halves whose losses drop by ``effect`` (n,) when a point is in."""
    from fine_cli.stages.validate import balanced_halves, truth_from_samples

    rng = np.random.default_rng(seed)
    n = effect.shape[0]
    in_mask = balanced_halves(m, n, rng)
    loss = rng.normal(size=(m, n)) - in_mask * effect
    arrays = {
        "in_mask": in_mask,
        "loss": loss.astype(np.float32),
        "confidence": -loss.astype(np.float32),
        **truth_from_samples(loss, -loss, in_mask),
        "flip_mask": np.zeros(n, bool),
    }
    return fine_cli.Truth(arrays=arrays, meta={"kind": "truth"})


def test_unbalanced_mu_true_equals_the_balanced_formula_on_a_balanced_design() -> None:
    from fine_cli.stages.validate import unbalanced_mu_true

    truth = _truth(np.linspace(0.0, 2.0, 50), 16, 0)
    got = unbalanced_mu_true(truth["loss"], truth["in_mask"])
    np.testing.assert_allclose(got, truth["mu_true"], rtol=1e-6, atol=1e-6)


def test_split_half_reliability_tells_a_resolved_truth_from_noise() -> None:
    from fine_cli.stages.validate import split_half_reliability

    strong = split_half_reliability(_truth(np.linspace(0.0, 3.0, 300), 32, 1))
    none = split_half_reliability(_truth(np.zeros(300), 32, 2))
    assert strong["split_half"] > 0.6 and strong["full_m"] > strong["split_half"]
    assert strong["ceiling"] == pytest.approx(np.sqrt(strong["full_m"]))
    assert abs(none["split_half"]) < 0.15
