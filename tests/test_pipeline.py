"""The four stages end to end, their properties, and shell pipelines."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from fine_cli.artifacts import load_artifact
from fine_cli.cli import app
from fine_cli.config import load_config
from fine_cli.estimators.samples import SignalView
from fine_cli.stages import estimate, train_collect
from tests.conftest import METHODS, parts

runner = CliRunner()
# float32 engine arithmetic summed in another order (chunking) differs in the last bits.
CHUNK_RTOL, CHUNK_ATOL = 1e-4, 1e-6


def _invoke(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, res.output
    return res.stdout


def test_four_commands_end_to_end(tiny_signals: Path, tmp_path: Path) -> None:
    rankings = []
    for method in METHODS:
        inf = tmp_path / f"influence-{method}.npz"
        rk = tmp_path / f"ranking-{method}.npz"
        _invoke("estimate", str(tiny_signals), "--method", method, "-o", str(inf))
        out = _invoke("rank", str(inf), "--top", "5", "--format", "json", "-o", str(rk))
        rows = json.loads(out)
        assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
        scores = load_artifact(str(inf), "influence")["scores"][0]
        ranking = load_artifact(str(rk), "ranking")
        np.testing.assert_array_equal(ranking["score"], np.sort(scores)[::-1])
        assert rows[0]["score"] == pytest.approx(scores.max())
        rankings.append(str(rk))
    plot = tmp_path / "recall.png"
    out = _invoke("evaluate", "recall", *rankings, "--json", "--plot", str(plot))
    report = json.loads(out)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels = [r["label"] for r in report["rankings"]]
    assert labels == list(METHODS)
    for r in report["rankings"]:
        assert 0.0 <= r["auroc"] <= 1.0
        assert r["p_grid"] == [0, 10, 20, 30, 50, 100]
    table = _invoke("evaluate", "recall", *rankings)
    assert "AUROC" in table and "tracin" in table


def test_artifacts_carry_provenance(tiny_signals: Path) -> None:
    sig = load_artifact(str(tiny_signals), "signals")
    assert sig.meta["config"]["train"]["epochs"] == 4
    assert sig.meta["schema_version"] == 1 and "torch" in sig.meta["versions"]
    assert sig["flip_mask"].sum() == round(0.2 * sig["flip_mask"].shape[0])
    assert (sig["labels"] != sig["clean_labels"]).tolist() == sig["flip_mask"].tolist()
    assert sig["probe_idx"].shape[:3] == (4, 2, 2)


def test_set_override_reaches_the_artifact(tiny_config: Path, tmp_path: Path) -> None:
    out = tmp_path / "s.npz"
    _invoke(
        "train-collect",
        str(tiny_config),
        "--set",
        "train.epochs=2",
        "--set",
        "collect.checkpoints=1",
        "-o",
        str(out),
        "-q",
    )
    sig = load_artifact(str(out), "signals")
    assert sig.meta["config"]["train"]["epochs"] == 2
    assert sig["checkpoint_epoch"].tolist() == [2]


def test_same_seed_same_signals_and_chunk_size_does_not_matter(tiny_config: Path) -> None:
    cfg = load_config(tiny_config, ["train.epochs=2"])
    a, _ = parts(train_collect.run(cfg))
    b, _ = parts(train_collect.run(cfg))
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    c, _ = parts(
        train_collect.run(load_config(tiny_config, ["train.epochs=2", "collect.chunk_size=7"]))
    )
    for k in ("sqnorm", "ip", "loss", "margin", "probe_sqnorm"):
        np.testing.assert_allclose(c[k], a[k], rtol=CHUNK_RTOL, atol=CHUNK_ATOL, err_msg=k)
    d, _ = parts(train_collect.run(load_config(tiny_config, ["train.epochs=2", "seed=1"])))
    assert not np.array_equal(d["sqnorm"], a["sqnorm"])


def _view(arrays: dict[str, np.ndarray], mode: str) -> SignalView:
    keep = {k: v for k, v in arrays.items() if k in SignalView.__dataclass_fields__}
    return SignalView(mode=mode, **keep)


def test_self_mode_equals_the_diagonal_of_test_mode(tiny_config: Path) -> None:
    over = ["train.epochs=3", "data.synthetic.n_samples=120"]
    self_arr, _ = parts(train_collect.run(load_config(tiny_config, over)))
    n = self_arr["train_index"].shape[0]
    test_over = [
        *over,
        "collect.mode=test",
        "collect.test_points.source=train",
        f"collect.test_points.indices={list(range(n))}",
    ]
    test_arr, meta = parts(train_collect.run(load_config(tiny_config, test_over)))
    assert meta["mode"] == "test"
    np.testing.assert_allclose(
        np.diagonal(test_arr["gram"], axis1=2, axis2=3), self_arr["sqnorm"], rtol=1e-4, atol=1e-7
    )
    s_view, t_view = _view(self_arr, "self"), _view(test_arr, "test")
    for name, fn in METHODS.items():
        if name == "grad-cos":  # defined differently in self mode (see docs/DECISIONS.md)
            continue
        np.testing.assert_allclose(
            fn(s_view, None)[0], np.diagonal(fn(t_view, None)), rtol=1e-3, atol=1e-5, err_msg=name
        )


def test_test_mode_with_groups_file(tiny_config: Path, tmp_path: Path) -> None:
    groups = tmp_path / "groups.json"
    cfg = load_config(tiny_config, ["train.epochs=2"])
    arrays, _ = parts(train_collect.run(cfg))
    idx = arrays["train_index"]
    groups.write_text(json.dumps([[int(idx[0]), int(idx[1])], [int(idx[5])], idx[10:20].tolist()]))
    out = tmp_path / "t.npz"
    _invoke(
        "train-collect",
        str(tiny_config),
        "--set",
        "train.epochs=2",
        "--set",
        "collect.mode=test",
        "--set",
        "collect.test_points.n=3",
        "--set",
        f"collect.groups_file={groups}",
        "-o",
        str(out),
        "-q",
    )
    sig = load_artifact(str(out), "signals", estimate.SIGNALS_REQUIRED)
    arrays, _ = parts(estimate.run(sig, "fine"))
    assert arrays["scores"].shape == (3, 3)
    assert arrays["group_ptr"].tolist() == [0, 2, 3, 13]
    rk = tmp_path / "inf.npz"
    _invoke("estimate", str(out), "-o", str(rk))
    rows = json.loads(_invoke("rank", str(rk), "--query", "1", "--format", "json"))
    assert len(rows) == 3 and rows[0]["train_index"] in (-1, int(idx[5]))


def _fine_exe() -> list[str]:
    exe = shutil.which("fine", path=os.path.dirname(sys.executable))
    return [exe] if exe else [sys.executable, "-m", "fine_cli.cli"]


def test_shell_pipeline_and_closed_pipe(tiny_config: Path, tmp_path: Path) -> None:
    fine = " ".join(_fine_exe())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = (
        f"{fine} train-collect {tiny_config} --set train.epochs=2 -q -o - "
        f"| {fine} estimate - -o - | {fine} rank - --top 5 --format csv"
    )
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", cmd], capture_output=True, text=True, env=env, timeout=300
    )
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    # f-INE adds its standard error and p-value columns after the common ones.
    assert lines[0].startswith("rank,subset,train_index,label,score,flipped") and len(lines) == 6
    inf = tmp_path / "inf.npz"
    subprocess.run(
        [
            "bash",
            "-c",
            f"{fine} train-collect {tiny_config} --set train.epochs=1 -q -o - | "
            f"{fine} estimate - -o {inf}",
        ],
        check=True,
        env=env,
        timeout=300,
    )
    res = subprocess.run(
        ["bash", "-o", "pipefail", "-c", f"{fine} rank {inf} --top 200 --format csv | head -n 2"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert len(res.stdout.splitlines()) == 2
