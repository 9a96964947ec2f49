"""TracIn, TRAK, influence functions and margin against slow twins: explicit autograd loops
over the checkpoints, explicit matrix inverses, the exact Hessian of a logistic regression."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from fine_cli.cli import app
from fine_cli.config import load_config
from fine_cli.errors import FineError
from fine_cli.estimators.baselines import margin, tracin
from fine_cli.estimators.influence_functions import DAMPING, if_scores, influence
from fine_cli.estimators.samples import SignalView
from fine_cli.estimators.trak import RIDGE, trak, trak_scores
from fine_cli.stages import train_collect
from tests.conftest import METHODS, parts, write_config

# float32 per-sample gradients, summed in another order than the autograd loop.
F32_RTOL, F32_ATOL = 2e-4, 1e-6
# float64 formulas in another association order.
F64_RTOL = 1e-9
# Singular values below this are rounding (float64 class residuals sum to ~1e-16; the
# gradients here are of order 1, so one threshold serves as absolute and relative).
RANK_TOL = 1e-9


def _view(arrays: dict[str, np.ndarray], mode: str) -> SignalView:
    keep = {k: v for k, v in arrays.items() if k in SignalView.__dataclass_fields__}
    return SignalView(mode=mode, **keep)


def _per_sample_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor, fn: Any) -> np.ndarray:
    """(n, d) float64: autograd of ``fn(logits (1, C), y (1,))`` one sample at a time, on a
    float64 copy of ``model``."""
    model = copy.deepcopy(model).double().eval()
    x = x.double()
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(x.shape[0]):
        out = fn(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(out, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows).numpy()


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits, y)


def _f(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TRAK's output function log(p / (1 - p)) of one sample."""
    true = logits[0, y[0]]
    others = torch.cat([logits[0, : y[0]], logits[0, y[0] + 1 :]])
    return true - torch.logsumexp(others, 0)


def _run(tmp_path: Path, overrides: list[str], test_mode: bool = False) -> tuple[Any, ...]:
    """train-collect on the tiny config, keeping copies of main and aux at every checkpoint."""
    cfg = load_config(write_config(tmp_path / "cfg.yaml"), overrides)
    snaps: list[list[nn.Module]] = []
    arrays, meta = parts(
        train_collect.run(
            cfg, on_checkpoint=lambda c, e, models: snaps.append([copy.deepcopy(m) for m in models])
        )
    )
    return cfg, arrays, meta, snaps


# ---- TracIn: an explicit autograd loop over checkpoints ------------------------------------


def test_tracin_equals_autograd_loop_over_checkpoints(tmp_path: Path) -> None:
    n = 40
    over = [
        "train.epochs=3",
        "data.synthetic.n_samples=60",
        "collect.mode=test",
        "collect.test_points.source=train",
        f"collect.test_points.indices={list(range(n))}",
        "experiment.methods=[tracin]",
    ]
    cfg, arrays, _, snaps = _run(tmp_path, over)
    from fine_cli.data import load_data

    data = load_data(cfg.data)
    x, y = data.train.x, data.train.y
    assert len(snaps) == 3
    want_test = np.zeros((n, x.shape[0]))
    want_self = np.zeros(x.shape[0])
    for lr, (main, _aux) in zip(arrays["lr"], snaps, strict=True):
        g = _per_sample_grads(main, x, y, _ce)  # (n_train, d) at this checkpoint
        want_test += lr * g[:n] @ g.T
        want_self += lr * (g * g).sum(axis=1)
    got = tracin(_view(arrays, "test"), None)
    np.testing.assert_allclose(got, want_test, rtol=F32_RTOL, atol=F32_ATOL)
    # self mode (same seeds, so the same models): sum_c lr_c ||g_c(z)||^2
    self_arrays, _ = parts(
        train_collect.run(load_config(write_config(tmp_path / "s.yaml"), over[:2]))
    )
    got_self = tracin(_view(self_arrays, "self"), None)[0]
    np.testing.assert_allclose(got_self, want_self, rtol=F32_RTOL, atol=F32_ATOL)


# ---- TRAK and influence functions: explicit inverses, exact Hessian ----------------------


def _explicit_trak(phi: np.ndarray, q: np.ndarray, phi_q: np.ndarray | None) -> np.ndarray:
    e, _, k = phi.shape
    total = 0.0
    for i in range(e):
        kern = phi[i].T @ phi[i]
        inv = np.linalg.inv(kern + RIDGE * np.trace(kern) / k * np.eye(k))
        queries = phi[i] if phi_q is None else phi_q[i]
        full = queries @ inv @ phi[i].T
        total = total + (np.diagonal(full)[None, :] if phi_q is None else full)
    return total / e * q.mean(axis=0)[None, :]


def _explicit_if(g: np.ndarray, h: np.ndarray, gq: np.ndarray | None) -> np.ndarray:
    k = h.shape[0]
    inv = np.linalg.inv(h + DAMPING * np.trace(h) / k * np.eye(k))
    full = (g if gq is None else gq) @ inv @ g.T
    return np.diagonal(full)[None, :] if gq is None else full


def test_trak_and_if_equal_explicit_inverses_on_random_features() -> None:
    rng = np.random.default_rng(0)
    phi = rng.normal(size=(3, 50, 6))
    q = rng.uniform(0.01, 0.9, size=(3, 50))
    phi_q = rng.normal(size=(3, 4, 6))
    np.testing.assert_allclose(trak_scores(phi, q), _explicit_trak(phi, q, None), rtol=1e-8)
    np.testing.assert_allclose(trak_scores(phi, q, phi_q), _explicit_trak(phi, q, phi_q), rtol=1e-8)
    a = rng.normal(size=(6, 6))
    h = a @ a.T
    g, gq = rng.normal(size=(50, 6)), rng.normal(size=(4, 6))
    np.testing.assert_allclose(if_scores(g, h), _explicit_if(g, h, None), rtol=1e-8)
    np.testing.assert_allclose(if_scores(g, h, gq), _explicit_if(g, h, gq), rtol=1e-8)


def test_features_and_curvature_of_a_logistic_regression_are_exact(tmp_path: Path) -> None:
    """hidden=[] is multinomial logistic regression: the Gauss-Newton matrix is its exact
    Hessian. The sketch S is recovered from sketched loss gradients, then the collected
    features must be S grad f, the curvature S H S^T, and TRAK / IF their explicit formulas."""
    k = 12
    over = [
        "model.hidden=[]",
        "train.epochs=2",
        "data.synthetic.n_samples=120",
        f"collect.features.proj_dim={k}",
        "experiment.methods=[trak, if]",
    ]
    cfg, arrays, meta, snaps = _run(tmp_path, over)
    from fine_cli.data import load_data
    from fine_cli.grads import GradEngine

    data = load_data(cfg.data)
    x, y = data.train.x, data.train.y
    models = snaps[-1]  # the models at the last checkpoint, where features are taken
    g_loss = _per_sample_grads(models[0], x, y, _ce)  # (n, d)
    n_classes, d_in = data.n_classes, x.shape[1]
    # the gradients span the (C-1)(d_in+1) directions whose class residuals sum to zero
    assert np.linalg.matrix_rank(g_loss, tol=RANK_TOL) == (n_classes - 1) * (d_in + 1)
    z = GradEngine(models[0]).project(x, y, k, cfg.collect.features.seed).double().numpy()
    s_t = np.linalg.pinv(g_loss, rcond=RANK_TOL) @ z  # (d, k): S^T on that span

    for e, model in enumerate(models):
        g_f = _per_sample_grads(model, x, y, _f)
        scale = np.abs(g_f @ s_t).max()
        np.testing.assert_allclose(arrays["proj_grad"][e], g_f @ s_t, atol=F32_RTOL * scale)
        p = torch.softmax(copy.deepcopy(model).double()(x.double()).detach(), 1)
        want_q = 1.0 - p[torch.arange(len(y)), y].numpy()
        np.testing.assert_allclose(arrays["one_minus_p"][e], want_q, rtol=1e-5)

    main = models[0]
    params = [p for p in main.parameters()]
    shapes = [p.shape for p in params]

    def mean_loss(flat: torch.Tensor) -> torch.Tensor:
        ws, i = [], 0
        for shp in shapes:
            size = int(np.prod(shp))
            ws.append(flat[i : i + size].reshape(shp))
            i += size
        logits = nn.functional.linear(x.double(), ws[0], ws[1])
        return nn.functional.cross_entropy(logits, y)

    flat = torch.cat([p.detach().reshape(-1) for p in params]).double()
    hess = torch.autograd.functional.hessian(mean_loss, flat).numpy()
    want_ggn = s_t.T @ hess @ s_t
    np.testing.assert_allclose(arrays["ggn"], want_ggn, atol=F32_RTOL * np.abs(want_ggn).max())

    sig = _view(arrays, "self")
    phi = np.stack([_per_sample_grads(m, x, y, _f) @ s_t for m in models])
    want_trak = _explicit_trak(phi, arrays["one_minus_p"], None)
    np.testing.assert_allclose(trak(sig, None), want_trak, rtol=5e-3)
    want_if = _explicit_if(g_loss @ s_t, want_ggn, None)
    np.testing.assert_allclose(influence(sig, None), want_if, rtol=5e-3)
    assert meta["features"]["models"] == 2 and meta["features"]["proj_dim"] == k


# ---- collection only when asked -----------------------------------------------------------


def test_features_only_when_the_config_lists_trak_or_if(tmp_path: Path) -> None:
    base = ["train.epochs=2", "data.synthetic.n_samples=80"]
    plain, meta = parts(
        train_collect.run(
            load_config(write_config(tmp_path / "a.yaml"), [*base, "experiment.methods=[fine]"])
        )
    )
    assert "proj_grad" not in plain and "ggn" not in plain and meta["features"] is None
    for method in ("trak", "if"):
        with pytest.raises(FineError, match=r"experiment\.methods"):
            METHODS[method](_view(plain, "self"), None)
    only_trak, _ = parts(
        train_collect.run(
            load_config(
                write_config(tmp_path / "b.yaml"),
                [*base, "experiment.methods=[trak]", "collect.features.extra_models=1"],
            )
        )
    )
    assert only_trak["proj_grad"].shape[0] == 3 and "ggn" not in only_trak
    with pytest.raises(FineError, match="Gauss-Newton"):
        influence(_view(only_trak, "self"), None)
    # extra models train beside main and aux without changing their signals
    np.testing.assert_array_equal(only_trak["sqnorm"], plain["sqnorm"])
    only_if, _ = parts(
        train_collect.run(
            load_config(
                write_config(tmp_path / "c.yaml"),
                [*base, "experiment.methods=[fine]", "estimate.method=if"],
            )
        )
    )
    assert only_if["proj_grad"].shape[0] == 1 and only_if["ggn"].shape == (16, 16)


def test_estimate_trak_on_signals_without_features_is_one_sentence(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "cfg.yaml", {"experiment.methods": ["fine"]})
    sig = tmp_path / "s.npz"
    runner = CliRunner()
    res = runner.invoke(
        app, ["train-collect", str(cfg), "--set", "train.epochs=1", "-o", str(sig), "-q"]
    )
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["estimate", str(sig), "--method", "trak", "-o", str(tmp_path / "i")])
    assert res.exit_code == 3
    assert "Traceback" not in res.output and "experiment.methods" in res.output
    assert res.output.count("\n") <= 3  # one sentence, wrapped at most by the terminal


# ---- margin -------------------------------------------------------------------------------


def test_margin_is_minus_the_last_margin_and_groups_take_the_mean() -> None:
    rng = np.random.default_rng(1)
    c, n = 3, 6
    sig = SignalView(
        mode="self",
        lr=np.ones(c),
        probe_idx=np.zeros((c, 1, 2, 2), np.int64),
        sqnorm=np.ones((2, c, n)),
        ip=np.zeros((2, c, 1, 2, n)),
        probe_sqnorm=np.ones((2, c, 1, 2)),
        loss=np.ones((2, c, n)),
        margin=rng.normal(size=(2, c, n)),
    )
    np.testing.assert_allclose(margin(sig, None)[0], -sig.margin[0, -1], rtol=F64_RTOL)
    sig.group_ptr, sig.group_members = np.array([0, 2, 3]), np.array([1, 4, 5])
    want = [-(sig.margin[0, -1, 1] + sig.margin[0, -1, 4]) / 2, -sig.margin[0, -1, 5]]
    np.testing.assert_allclose(margin(sig, None)[0], want, rtol=F64_RTOL)
