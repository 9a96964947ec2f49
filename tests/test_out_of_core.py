"""Out of core: signals written to a directory of .npy files as they are collected equal
the in-memory ones; estimate streamed over blocks of points equals estimate in memory,
for every pointwise method and estimator; a test-mode Gram block that cannot fit is
refused before training, in a sentence naming its size and the keys to change."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import fine_cli
from fine_cli import outofcore, signal_dir
from fine_cli.cli import app
from fine_cli.estimators.fine_method import available_estimators
from fine_cli.estimators.options import EstimateOptions
from fine_cli.estimators.view import signal_view
from fine_cli.stages import estimate, estimate_stream, train_collect
from tests.conftest import write_config

runner = CliRunner()
# Both models, the probe second moments and the held-out loss: every estimator can run.
EVERYTHING = {
    "collect.auxiliary": True,
    "collect.moments": True,
    "collect.probe_repeats": 2,
    "experiment.methods": ["fine", "tracin", "grad-cos", "loss", "margin"],
}
# Blocks smaller than the set and than a probe batch's spread: every block boundary case.
SMALL_BLOCK = 37


def _same(
    a: fine_cli.Signals | fine_cli.Influence, b: fine_cli.Signals | fine_cli.Influence
) -> None:
    assert set(a.arrays) == set(b.arrays)
    for k in a.arrays:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(np.asarray(a[k]), np.asarray(b[k]), err_msg=k)


@pytest.fixture(scope="module")
def signals_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[fine_cli.Signals, Path]:
    """Signals collected in memory, and the same saved as a directory."""
    d = tmp_path_factory.mktemp("ooc")
    cfg = fine_cli.load_config(write_config(d / "c.yaml", EVERYTHING))
    sig = train_collect.run(cfg)
    outofcore.save_dir(sig, d / "sig")
    return sig, d / "sig"


def test_directory_storage_collects_the_in_memory_signals(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "c.yaml", {**EVERYTHING, "collect.storage": "directory"})
    res = runner.invoke(app, ["train-collect", str(cfg), "-o", str(tmp_path / "sig"), "-q"])
    assert res.exit_code == 0, res.output
    on_disk = fine_cli.load(tmp_path / "sig", "signals")
    assert isinstance(on_disk["sqnorm"], np.memmap)  # mapped, not read
    memory = fine_cli.train_collect(fine_cli.load_config(cfg, ["collect.storage=memory"]))
    _same(memory, on_disk)
    assert not (tmp_path / "sig.run").exists()


@pytest.mark.parametrize("method", estimate_stream.POINTWISE)
def test_streamed_estimate_equals_estimate_in_memory(
    method: str, signals_dir: tuple[fine_cli.Signals, Path]
) -> None:
    sig, path = signals_dir
    mapped = outofcore.load_dir(path, "signals")
    assert mapped.sha256 == sig.sha256  # the streamed content hash is the in-memory one
    assert estimate_stream.streams(mapped, method)  # type: ignore[arg-type]
    names = available_estimators(signal_view(sig)) if method == "fine" else ["rb"]
    for name in names:
        opts = EstimateOptions(estimator=name, bootstrap=20, permutations=19)
        want = estimate.run(sig, method, opts)
        got = estimate_stream.run(mapped, method, opts, chunk=SMALL_BLOCK)  # type: ignore[arg-type]
        _same(want, got)
        assert got.meta == want.meta, name
    auto = EstimateOptions(checkpoints="auto", bootstrap=0, permutations=0)
    streamed = estimate_stream.run(mapped, method, auto, chunk=SMALL_BLOCK)  # type: ignore[arg-type]
    _same(estimate.run(sig, method, auto), streamed)


def test_estimate_and_rank_read_and_write_directories(
    tmp_path: Path, signals_dir: tuple[fine_cli.Signals, Path]
) -> None:
    sig, path = signals_dir
    res = runner.invoke(
        app, ["estimate", str(path), "--method", "fine", "-o", f"{tmp_path / 'inf'}/"]
    )
    assert res.exit_code == 0, res.output
    inf = fine_cli.load(tmp_path / "inf", "influence")
    assert isinstance(inf["scores"], np.memmap)
    _same(estimate.run(sig, "fine"), inf)  # type: ignore[arg-type]
    res = runner.invoke(app, ["rank", str(tmp_path / "inf"), "-o", str(tmp_path / "r.npz")])
    assert res.exit_code == 0, res.output
    ranking = fine_cli.load(tmp_path / "r.npz", "ranking")
    want = fine_cli.rank(estimate.run(sig, "fine"))
    np.testing.assert_array_equal(ranking["order"], want["order"])


def test_a_gram_block_that_cannot_fit_is_refused_before_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signal_dir, "available_memory", lambda: 1 << 10)  # 1 KiB left
    cfg = fine_cli.load_config(
        write_config(
            tmp_path / "c.yaml",
            {"collect.mode": "test", "collect.test_points.n": 40, "train.epochs": 3},
        )
    )
    phases: list[str] = []
    with pytest.raises(fine_cli.ConfigError) as err:
        train_collect.run(cfg, lambda phase, done, total: phases.append(phase))
    text = str(err.value)
    assert phases == []  # refused before the first epoch
    assert " KiB" in text and "40 test points" in text and "3 checkpoints" in text
    for key in ("collect.test_points.n", "collect.checkpoints", "data.n_train"):
        assert key in text
    assert "collect.storage=directory" in text
    monkeypatch.setattr(signal_dir, "available_memory", lambda: 1 << 40)
    assert train_collect.run(cfg).mode == "test"
