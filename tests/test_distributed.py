"""Data-parallel train-collect: 2 processes over gloo on this CPU (torchrun) give the
signals of 1 process; the sharded collection alone, on the same models, agrees tighter."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fine_cli
from fine_cli.artifacts import load_signals
from tests.conftest import write_config

dist = pytest.importorskip("torch.distributed")
if not (dist.is_available() and dist.is_gloo_available()):
    pytest.skip("torch.distributed with gloo is not available", allow_module_level=True)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
# DDP sums two half-batch gradients where one process sums the whole batch: training
# rounds differently in the last bits, over 2 short epochs.
TRAINED_RTOL = 1e-4
# The same models: only the probe sums (all-reduced) are summed in another order.
SHARDED_RTOL = 1e-5
PROCESSES = 2
# A short run (the 2 epochs) on the tiny synthetic set.
SHORT = {"train.epochs": 2, "collect.probe_repeats": 1, "experiment.methods": ["fine", "tracin"]}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _torchrun(*args: str) -> subprocess.CompletedProcess:
    """torchrun on loopback: --master-addr 127.0.0.1 (the hostname may not resolve)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc_per_node={PROCESSES}",
        "--master-addr=127.0.0.1",
        f"--master-port={_free_port()}",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)


def relative_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |a| (0 for two zero arrays)."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    scale = float(np.abs(a64).max(initial=0.0))
    return float(np.abs(a64 - b64).max(initial=0.0)) / scale if scale else 0.0


def _agree(one: dict[str, np.ndarray], many: dict[str, np.ndarray], rtol: float) -> float:
    assert set(one) == set(many)
    worst = 0.0
    for k in one:
        assert one[k].dtype == many[k].dtype and one[k].shape == many[k].shape, k
        if one[k].dtype.kind in "iub":
            np.testing.assert_array_equal(one[k], many[k], err_msg=k)
        else:
            err = relative_error(one[k], many[k])
            assert err <= rtol, (k, err)
            worst = max(worst, err)
    return worst


def test_two_processes_give_the_signals_of_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "short.yaml", SHORT)
    out = tmp_path / "ddp.npz"
    res = _torchrun("-m", "fine_cli.cli", "train-collect", str(cfg), "-o", str(out), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    assert not (tmp_path / "ddp.npz.run").exists()
    many = load_signals(str(out))
    assert many.meta["parallel"] == {"processes": PROCESSES, "backend": "gloo"}
    one = fine_cli.train_collect(cfg)
    assert one.meta["parallel"] is None
    worst = _agree(one.arrays, many.arrays, TRAINED_RTOL)
    print(f"2 processes vs 1, trained: max relative error {worst:.2e}")


def test_sharded_collection_on_the_same_models_agrees_with_one_process(tmp_path: Path) -> None:
    from tests import distributed_worker as worker

    out = tmp_path / "sharded.npz"
    res = _torchrun(str(HERE / "distributed_worker.py"), str(out), str(tmp_path / "sig"))
    assert res.returncode == 0, res.stderr[-3000:]
    with np.load(out) as npz:
        many = {k: npz[k] for k in npz.files}
    one = {}
    for test_mode in (False, True):
        arrays = worker.collect(shard=False, test_mode=test_mode)
        one.update({f"{'test' if test_mode else 'self'}/{k}": v for k, v in arrays.items()})
    # directory storage: each rank wrote its own block of the files
    one.update({f"dir/{k}": v for k, v in worker.collect(False, False).items()})
    worst = _agree(one, many, SHARDED_RTOL)
    print(f"2 processes vs 1, same models: max relative error {worst:.2e}")


def test_bf16_training_keeps_collection_in_float32(tmp_path: Path) -> None:
    cfg = fine_cli.load_config(write_config(tmp_path / "c.yaml", SHORT))
    half = fine_cli.train_collect(fine_cli.load_config(cfg, ["train.precision=bf16"]))
    full = fine_cli.train_collect(cfg)
    assert half["sqnorm"].dtype == np.float32 and np.all(np.isfinite(half["sqnorm"]))
    assert not np.array_equal(half["loss"], full["loss"])  # autocast was in force
    assert relative_error(full["loss"], half["loss"]) < 0.1


def test_the_backend_is_nccl_with_cuda_and_gloo_without(monkeypatch: pytest.MonkeyPatch) -> None:
    from fine_cli import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.backend_for("auto") == "nccl"
    assert distributed.backend_for("cpu") == "gloo"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert distributed.backend_for("auto") == "gloo"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices (NCCL)")
def test_two_gpus_give_the_signals_of_one(tmp_path: Path) -> None:
    cfg = write_config(tmp_path / "gpu.yaml", {**SHORT, "train.device": "cuda"})
    out = tmp_path / "ddp.npz"
    res = _torchrun("-m", "fine_cli.cli", "train-collect", str(cfg), "-o", str(out), "-q")
    assert res.returncode == 0, res.stderr[-3000:]
    _agree(fine_cli.train_collect(cfg).arrays, load_signals(str(out)).arrays, TRAINED_RTOL)
